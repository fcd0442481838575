//! The plain-HTTP half of the endpoint, driven by a raw hyper client.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use opamp_proto::{
    AgentCapabilities, AgentDisconnect, CommandType, Message, ServerErrorResponseType,
    ServerToAgent, ServerToAgentCommand,
};
use opamp_server::{
    ConnectDecision, DEFAULT_CAPABILITIES, Delivery, DisconnectReason, OpampServer, Refusal,
    Registry, TransportKind,
};
use opamp_testkit::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// POSTs `compressed`, declared as gzip-encoded, to the server at `addr`.
async fn post_gzipped(addr: std::net::SocketAddr, compressed: Vec<u8>) -> Response<Bytes> {
    let request = post(addr)
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Full::new(Bytes::from(compressed)))
        .unwrap();
    http_request(addr, request).await
}

#[tokio::test]
async fn ws_16_http_04_requests_are_classified_by_their_head() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let addr = running.addr;
    const PROTOBUF: Option<&str> = Some("application/x-protobuf");
    // (method, path, content type, body, expected status)
    let cases = [
        ("GET", "/v1/opamp", None, "", 400),
        ("PUT", "/v1/opamp", PROTOBUF, "", 405),
        // Unsupported media type.
        ("POST", "/v1/opamp", Some("text/plain"), "hi", 415),
        // GEN-03: one endpoint, at the configured path.
        ("POST", "/v2/other", PROTOBUF, "", 404),
    ];
    for (method, path, content_type, body, expected) in cases {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(header::HOST, addr.to_string());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let status = http_request(addr, request).await.status();
        assert_eq!(
            status.as_u16(),
            expected,
            "{method} {path} {content_type:?}"
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn gen_03_gen_04_defaults() {
    assert_eq!(opamp_server::DEFAULT_PATH, "/v1/opamp");
    assert_eq!(opamp_server::DEFAULT_PORT, 4320);
}

#[tokio::test]
async fn http_01_cap_07_uid_06_exchange_and_session() {
    let (running, mut seen) = RunningServer::recorded().await;
    let agent = uid(1);
    let first = http_exchange(running.addr, &report(agent, 0)).await;
    assert_eq!(first.instance_uid, agent.to_bytes(), "UID-06");
    assert_eq!(first.typed_capabilities(), DEFAULT_CAPABILITIES, "CAP-07");
    let second = http_exchange(running.addr, &heartbeat(agent, 1)).await;
    assert_eq!(second.instance_uid, agent.to_bytes());
    assert_eq!(second.capabilities, 0, "only the session's first reply");

    let connection = running.registry().connection(agent).expect("session");
    assert_eq!(connection.transport(), TransportKind::PlainHttp);
    // One session across polls: one on_connected.
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!("connected")
    };
    assert_eq!(id, connection.id());
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Message(id, 0)
    );
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Message(id, 1)
    );

    // HTTP-24 / MSG-07: agent_disconnect ends the session.
    let mut goodbye = heartbeat(agent, 2);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    http_exchange(running.addr, &goodbye).await;
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Message(id, 2)
    );
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::AgentDisconnect)
    );
    assert!(running.registry().connection(agent).is_none());

    // The next poll starts a new session, whose first reply again has capabilities.
    let again = http_exchange(running.addr, &report(agent, 3)).await;
    assert_eq!(again.typed_capabilities(), DEFAULT_CAPABILITIES);
    let ServerEvent::Connected(new_id) = next_server_event(&mut seen).await else {
        panic!("new session")
    };
    assert_ne!(new_id, id);
    running.stop().await;
}

#[tokio::test]
async fn http_06_gzip_request_bodies_are_accepted() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let message = report(uid(2), 0);
    let response = post_gzipped(running.addr, gzip(&message.encode_to_vec())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let reply = ServerToAgent::decode(response.into_body()).unwrap();
    assert_eq!(reply.instance_uid, uid(2).to_bytes());
    running.stop().await;
}

#[tokio::test]
async fn http_17_oversize_after_decompression_is_413() {
    let (running, mut seen) =
        RunningServer::recorded_with(|builder| builder.max_message_size(64 * 1024)).await;
    // A gzip bomb: ~1 KiB on the wire, 1 MiB inflated.
    let mut message = report(uid(3), 0);
    message
        .agent_description
        .as_mut()
        .unwrap()
        .non_identifying_attributes
        .push(opamp_proto::KeyValue::new(
            "padding",
            "x".repeat(1024 * 1024),
        ));
    let compressed = gzip(&message.encode_to_vec());
    assert!(compressed.len() < 64 * 1024);
    let response = post_gzipped(running.addr, compressed).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(matches!(
        next_server_event(&mut seen).await,
        ServerEvent::ReadError(_)
    ));
    assert!(running.registry().agent(uid(3)).await.unwrap().is_none());
    running.stop().await;
}

#[tokio::test]
async fn err_02_bad_bodies_and_bad_uids() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let message = report(uid(4), 0);
    let garbage = post(running.addr)
        .body(Full::new(Bytes::from_static(&[0x0a, 0x7f, 0x01])))
        .unwrap();
    assert_eq!(
        http_request(running.addr, garbage).await.status(),
        StatusCode::BAD_REQUEST
    );

    // UID-03: a uid of the wrong length is a protocol-level BAD_REQUEST.
    let mut short = message.clone();
    short.instance_uid = Bytes::from_static(b"short");
    let reply = http_exchange(running.addr, &short).await;
    assert_eq!(
        reply.error_response.unwrap().r#type(),
        ServerErrorResponseType::BadRequest
    );
    assert_eq!(reply.instance_uid, Bytes::from_static(b"short"));
    running.stop().await;
}

#[tokio::test]
async fn http_15_pushes_wait_for_the_next_poll_and_commands_travel_alone() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let registry = running.registry().clone();
    let agent = uid(5);
    let mut first = report(agent, 0);
    first.capabilities = (CAPS | AgentCapabilities::ACCEPTS_RESTART_COMMAND).bits();
    http_exchange(running.addr, &first).await;

    assert_eq!(
        registry.restart(agent).await.unwrap(),
        Delivery::QueuedForPoll
    );
    let mut config = opamp_proto::AgentConfigMap::default();
    config.config_map.insert(String::new(), Default::default());
    let offer = registry.set_remote_config(agent, config).await.unwrap();
    assert_eq!(offer.delivery, Some(Delivery::QueuedForPoll));

    let mut poll = heartbeat(agent, 1);
    poll.capabilities = first.capabilities;
    let reply = http_exchange(running.addr, &poll).await;
    assert_eq!(reply.remote_config.map(|r| r.config_hash), Some(offer.hash));
    assert!(reply.command.is_none(), "CMD-02: not next to other offers");
    poll.sequence_num = 2;
    let reply = http_exchange(running.addr, &poll).await;
    assert_eq!(
        reply.command,
        Some(ServerToAgentCommand {
            r#type: CommandType::Restart as i32
        }),
        "the command on the next, otherwise empty, reply"
    );
    assert!(reply.remote_config.is_none());
    poll.sequence_num = 3;
    assert!(http_exchange(running.addr, &poll).await.command.is_none());
    running.stop().await;
}

#[tokio::test]
async fn conn_06_on_connecting_refuses_with_401_and_429() {
    let (recorder, _seen) = ServerRecorder::new();
    let recorder = recorder.on_connecting(|request| {
        let auth = request.parts.headers.get(header::AUTHORIZATION);
        match auth.map(|value| value.as_bytes()) {
            Some(b"Bearer good") => ConnectDecision::Accept,
            Some(b"Bearer busy") => {
                ConnectDecision::Refuse(Refusal::too_many_requests(Some(Duration::from_secs(42))))
            }
            _ => ConnectDecision::Refuse(Refusal::unauthorized(Some(
                http::HeaderValue::from_static("Bearer realm=\"opamp\""),
            ))),
        }
    });
    let running = RunningServer::start(OpampServer::new(recorder)).await;
    let message = report(uid(6), 0);
    let body = || Full::new(Bytes::from(message.encode_to_vec()));

    let anonymous = post(running.addr).body(body()).unwrap();
    let response = http_request(running.addr, anonymous).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "CONN-06");
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"opamp\""
    );

    let busy = post(running.addr)
        .header(header::AUTHORIZATION, "Bearer busy")
        .body(body())
        .unwrap();
    let response = http_request(running.addr, busy).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "HTTP-21");
    assert_eq!(response.headers()[header::RETRY_AFTER], "42");

    let good = post(running.addr)
        .header(header::AUTHORIZATION, "Bearer good")
        .body(body())
        .unwrap();
    assert_eq!(
        http_request(running.addr, good).await.status(),
        StatusCode::OK
    );

    // The same check guards the WebSocket upgrade (CONN-05).
    let refused = tokio_tungstenite::connect_async(running.ws_url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected a 401 refusal, got {other:?}"),
    }
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn http_25_silent_agents_go_stale() {
    let (recorder, mut seen) = ServerRecorder::new();
    let registry = Registry::builder()
        .stale_after(Duration::from_secs(90))
        .build();
    let server = OpampServer::builder()
        .callbacks(recorder)
        .registry(registry)
        .build();
    let running = RunningServer::start(server).await;
    let mut events = running.registry().subscribe();
    let agent = uid(7);
    http_exchange(running.addr, &report(agent, 0)).await;
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!()
    };
    next_server_event(&mut seen).await;

    // Polls within the window keep it alive.
    tokio::time::sleep(Duration::from_secs(60)).await;
    http_exchange(running.addr, &heartbeat(agent, 1)).await;
    next_server_event(&mut seen).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(seen.try_recv().is_err(), "not stale yet");
    assert!(running.registry().connection(agent).is_some());

    // Then silence.
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::Stale)
    );
    let record = running.registry().agent(agent).await.unwrap().unwrap();
    assert!(!record.is_connected());
    let stale = std::iter::from_fn(|| events.try_recv().ok()).any(|event| {
        event
            == opamp_server::AgentEvent::Disconnected {
                uid: agent,
                reason: DisconnectReason::Stale,
            }
    });
    assert!(stale);
    running.stop().await;
}
