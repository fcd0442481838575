//! Hostile clients against the limits: sizes, connection count, idle and
//! slow clients, agents that do not read, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{StatusCode, header};
use http_body_util::Full;
use opamp_proto::{AgentCapabilities, Message};
use opamp_server::{AgentEvent, DisconnectReason, Keepalive, OpampServer, SendError};
use opamp_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn ws_09_oversize_incoming_message_closes_with_1009() {
    let (running, mut seen) =
        RunningServer::recorded_with(|builder| builder.max_message_size(4096)).await;
    let mut ws = ws_connect(running.addr).await;
    let mut frame = vec![0u8];
    frame.extend(std::iter::repeat_n(0x08, 8192));
    ws.send(WsMessage::Binary(Bytes::from(frame)))
        .await
        .unwrap();
    assert_eq!(ws_close_code(&mut ws).await, Some(1009));
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!()
    };
    assert!(matches!(
        next_server_event(&mut seen).await,
        ServerEvent::ReadError(_)
    ));
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::MessageTooLarge)
    );
    running.stop().await;
}

#[tokio::test]
async fn ws_11_oversize_outgoing_message_is_not_sent() {
    let server = OpampServer::builder().max_message_size(4096).build();
    let running = RunningServer::start(server).await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(1);
    ws_exchange(&mut ws, &report(agent, 0)).await;
    let result = running.registry().send(agent, big_config(8192)).await;
    assert!(
        matches!(result, Err(SendError::TooLarge { limit: 4096, .. })),
        "{result:?}"
    );
    // The connection is fine.
    ws_send(&mut ws, &heartbeat(agent, 1)).await;
    assert!(ws_recv(&mut ws).await.remote_config.is_none());
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn connection_limit_answers_503_with_retry_after() {
    let (running, mut seen) = RunningServer::recorded_with(|builder| {
        builder
            .max_connections(1)
            .busy_retry_after(Duration::from_secs(17))
    })
    .await;
    let mut first = ws_connect(running.addr).await;
    ws_exchange(&mut first, &report(uid(2), 0)).await;
    assert_eq!(running.server.active_connections(), 1);

    // WS-24: an upgrade over the limit.
    match tokio_tungstenite::connect_async(running.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "17");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // HTTP-21: a plain-HTTP request over the limit.
    let message = report(uid(3), 0);
    let request = post(running.addr)
        .body(Full::new(Bytes::from(message.encode_to_vec())))
        .unwrap();
    let response = http_request(running.addr, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "17");

    // Once the first leaves, there is room again.
    first.close(None).await.unwrap();
    drop(first);
    loop {
        if let ServerEvent::Disconnected(..) = next_server_event(&mut seen).await {
            break;
        }
    }
    assert_eq!(running.server.active_connections(), 0);
    let reply = http_exchange(running.addr, &message).await;
    assert_eq!(reply.instance_uid, uid(3).to_bytes());
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_websockets_are_closed_after_missed_heartbeats() {
    let (running, mut seen) = RunningServer::recorded_with(|builder| {
        builder
            .heartbeat_interval(Duration::from_secs(10))
            .idle_timeout_heartbeats(3)
    })
    .await;

    // A client that upgrades and then says nothing.
    let mut silent = ws_connect(running.addr).await;
    let started = tokio::time::Instant::now();
    assert_eq!(ws_close_code(&mut silent).await, Some(1000));
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "not before 3 heartbeats"
    );
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!()
    };
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::IdleTimeout)
    );

    // An agent that announced heartbeats and stopped sending them.
    let mut agent = ws_connect(running.addr).await;
    ws_exchange(&mut agent, &report(uid(4), 0)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    ws_exchange(&mut agent, &heartbeat(uid(4), 1)).await;
    let last_message = tokio::time::Instant::now();
    assert_eq!(ws_close_code(&mut agent).await, Some(1000));
    assert!(
        last_message.elapsed() >= Duration::from_secs(30),
        "HB-06: counted from the last message"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hb_11_agents_without_heartbeats_are_not_timed_out() {
    // This raw client does not read while it sleeps, so it would not answer
    // keepalive pings (tungstenite answers them while reading); keepalive is
    // tested on its own below.
    let server = OpampServer::builder()
        .heartbeat_interval(Duration::from_secs(10))
        .idle_timeout_heartbeats(3)
        .keepalive(None)
        .build();
    let running = RunningServer::start(server).await;
    let mut ws = ws_connect(running.addr).await;
    let mut quiet = report(uid(5), 0);
    quiet.capabilities = AgentCapabilities::REPORTS_STATUS.bits();
    ws_exchange(&mut ws, &quiet).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    quiet.sequence_num = 1;
    quiet.agent_description = None;
    ws_send(&mut ws, &quiet).await;
    assert_eq!(
        ws_recv(&mut ws).await.instance_uid,
        uid(5).to_bytes(),
        "still connected"
    );
    drop(ws);
    running.stop().await;
}

/// A server that allows five seconds for a request head.
async fn with_header_read_timeout() -> RunningServer {
    let server = OpampServer::builder()
        .header_read_timeout(Duration::from_secs(5))
        .build();
    RunningServer::start(server).await
}

/// Sends `opening` on a new TCP connection and waits for the server to hang
/// up: after its header read timeout, long before ten minutes (paused
/// clock). Returns what the server sent.
async fn hang_up_after(running: &RunningServer, opening: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    stream.write_all(opening).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(600), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server must hang up on {opening:?}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    received
}

#[tokio::test(start_paused = true)]
async fn slowloris_request_heads_time_out() {
    let running = with_header_read_timeout().await;
    // Half a request head, and then nothing.
    let received = hang_up_after(
        &running,
        b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: applic",
    )
    .await;
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&received)
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn silent_connections_and_half_http2_prefaces_time_out() {
    let running = with_header_read_timeout().await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        hang_up_after(&running, opening).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn an_agent_that_never_reads_is_disconnected() {
    let (running, mut seen) = RunningServer::recorded_with(|builder| {
        builder
            .send_queue_capacity(2)
            .close_timeout(Duration::from_millis(200))
    })
    .await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(6);
    ws_exchange(&mut ws, &report(agent, 0)).await;
    // From here on the client reads nothing.
    let connection = running.registry().connection(agent).unwrap();
    let push = big_config(512 * 1024);
    let outcome =
        push_until_refused(400, || std::future::ready(connection.send(push.clone()))).await;
    assert!(matches!(outcome, Some(SendError::QueueFull)), "{outcome:?}");
    assert!(connection.is_closed());
    let reason = loop {
        if let ServerEvent::Disconnected(_, reason) = next_server_event(&mut seen).await {
            break reason;
        }
    };
    assert_eq!(reason, DisconnectReason::SendQueueFull);
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_websockets_with_1001_and_drains_http() {
    let gate = Arc::new(Semaphore::new(0));
    let (recorder, mut seen) = ServerRecorder::new();
    let recorder = recorder.gated(gate.clone());
    let mut running = RunningServer::start(OpampServer::new(recorder)).await;
    let addr = running.addr;

    // A WebSocket agent, connected and idle.
    let mut ws = ws_connect(addr).await;
    let ServerEvent::Connected(_) = next_server_event(&mut seen).await else {
        panic!()
    };

    // A plain-HTTP request stuck in on_message.
    let in_flight = tokio::spawn(async move { http_exchange(addr, &report(uid(7), 0)).await });
    loop {
        if let ServerEvent::Message(..) = next_server_event(&mut seen).await {
            break;
        }
    }

    running.begin_stop();
    assert_eq!(
        ws_close_code(&mut ws).await,
        Some(1001),
        "WebSockets are told the server goes away"
    );
    // The in-flight request is allowed to finish.
    gate.add_permits(1);
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.instance_uid, uid(7).to_bytes());
    running.join().await;
}

/// Server-side keepalive: a WebSocket from which nothing arrives, not even a
/// Pong, is closed after the keepalive timeout and its agent marked
/// disconnected (dead links behind load balancers; opamp-go issue 397). A
/// peer that keeps reading answers the pings and stays, even without
/// sending a message (HB-11).
// Real time: with paused time the clock jumps while pongs are in flight.
#[tokio::test]
async fn keepalive_closes_a_silent_websocket_and_keeps_a_responsive_one() {
    let server = OpampServer::builder()
        .idle_timeout_heartbeats(0)
        .keepalive(Some(Keepalive::new(
            Duration::from_millis(300),
            Duration::from_secs(3),
        )))
        .build();
    let running = RunningServer::start(server).await;
    let mut events = running.registry().subscribe();
    let mut quiet_caps = report(uid(40), 0);
    quiet_caps.capabilities = AgentCapabilities::REPORTS_STATUS.bits();

    // A silent peer: sends its report, then never reads again, so its
    // pongs never go out.
    let mut silent = ws_connect(running.addr).await;
    let mut other = quiet_caps.clone();
    other.instance_uid = uid(41).to_bytes();
    ws_exchange(&mut silent, &other).await;

    // A responsive peer: it keeps reading, so it answers every ping, while
    // the silent one is found out.
    let mut responsive = ws_connect(running.addr).await;
    ws_exchange(&mut responsive, &quiet_caps).await;
    let found_out = async {
        loop {
            match events.recv().await.unwrap() {
                AgentEvent::Disconnected { uid: gone, reason } if gone == uid(41) => {
                    break reason;
                }
                AgentEvent::Disconnected { uid: gone, reason } if gone == uid(40) => {
                    panic!("the responsive peer was dropped: {reason:?}")
                }
                _ => {}
            }
        }
    };
    let reason = tokio::select! {
        reason = found_out => reason,
        next = ws_next(&mut responsive) => panic!("the responsive peer got {next:?}"),
        () = tokio::time::sleep(Duration::from_secs(60)) => panic!("the silent peer was never dropped"),
    };
    assert_eq!(reason, DisconnectReason::Unresponsive);
    assert!(running.registry().connection(uid(40)).is_some());
    drop(silent);
    drop(responsive);
    running.stop().await;
}
