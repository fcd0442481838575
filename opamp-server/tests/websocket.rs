//! The WebSocket half of the endpoint, driven by a raw tungstenite client.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use opamp_proto::{
    AgentDisconnect, RemoteConfigStatus, RemoteConfigStatuses, ServerCapabilities,
    ServerErrorResponseType, ServerToAgent, server_error_response,
};
use opamp_server::{
    DEFAULT_CAPABILITIES, DisconnectReason, OpampServer, RemoteConfigState, unavailable_response,
};
use opamp_testkit::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn sts_04_uid_06_cap_07_every_message_answered_first_with_capabilities() {
    let (running, _seen) =
        RunningServer::recorded_with(|builder| builder.custom_capabilities(["io.example.echo"]))
            .await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(1);

    let first = ws_exchange(&mut ws, &report(agent, 0)).await;
    assert_eq!(first.instance_uid, agent.to_bytes(), "UID-06");
    assert_eq!(
        first.typed_capabilities(),
        DEFAULT_CAPABILITIES,
        "CAP-07: first reply"
    );
    assert!(
        first
            .typed_capabilities()
            .contains(ServerCapabilities::ACCEPTS_STATUS),
        "CAP-08"
    );
    assert_eq!(
        first.custom_capabilities.unwrap().capabilities,
        vec!["io.example.echo".to_owned()],
        "CUS-01"
    );
    assert!(first.error_response.is_none(), "STS-05");

    for sequence_num in 1..4 {
        let reply = ws_exchange(&mut ws, &heartbeat(agent, sequence_num)).await;
        assert_eq!(reply.instance_uid, agent.to_bytes(), "UID-06");
        assert_eq!(reply.capabilities, 0, "CAP-07: later replies may omit it");
        assert!(
            reply.custom_capabilities.is_none(),
            "CUS-02: only when it changes"
        );
    }
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn callbacks_run_in_order_for_one_connection() {
    let (running, mut seen) = RunningServer::recorded().await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(2);
    for sequence_num in 0..3 {
        ws_exchange(&mut ws, &report(agent, sequence_num)).await;
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();

    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!("connected first")
    };
    for sequence_num in 0..3 {
        assert_eq!(
            next_server_event(&mut seen).await,
            ServerEvent::Message(id, sequence_num)
        );
    }
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::ClosedByAgent { code: Some(1000) })
    );
    // The registry forgot the agent (MSG-07).
    let record = running.registry().agent(agent).await.unwrap().unwrap();
    assert!(!record.is_connected());
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn msg_07_agent_disconnect_then_close() {
    let (running, mut seen) = RunningServer::recorded().await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(3);
    ws_exchange(&mut ws, &report(agent, 0)).await;
    let mut goodbye = heartbeat(agent, 1);
    goodbye.agent_disconnect = Some(AgentDisconnect {});
    ws_exchange(&mut ws, &goodbye).await;
    assert!(running.registry().connection(agent).is_none());
    // WS-17: the agent then closes; the server completes the handshake.
    ws.close(None).await.unwrap();
    assert!(matches!(
        ws_next(&mut ws).await,
        FromServer::Close(_) | FromServer::End
    ));
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!()
    };
    next_server_event(&mut seen).await;
    next_server_event(&mut seen).await;
    assert!(
        matches!(next_server_event(&mut seen).await, ServerEvent::Disconnected(other, _) if other == id)
    );
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn rcfg_03_pushed_config_is_tracked_until_applied() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let registry = running.registry().clone();
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(4);
    ws_exchange(&mut ws, &report(agent, 0)).await;

    let offer = registry
        .set_remote_config(agent, config_map("level: debug"))
        .await
        .unwrap();
    let pushed = ws_recv(&mut ws).await;
    assert_eq!(pushed.instance_uid, agent.to_bytes());
    let remote = pushed
        .remote_config
        .expect("pushed without waiting for the agent");
    assert_eq!(remote.config_hash, offer.hash);
    assert_eq!(remote.config, Some(config_map("level: debug")));

    let waiter = {
        let registry = registry.clone();
        let hash = offer.hash.clone();
        tokio::spawn(async move { registry.wait_for_remote_config(agent, &hash).await })
    };
    let mut applied = heartbeat(agent, 1);
    applied.remote_config_status = Some(RemoteConfigStatus {
        last_remote_config_hash: offer.hash.clone(),
        status: RemoteConfigStatuses::Applied as i32,
        error_message: String::new(),
    });
    let reply = ws_exchange(&mut ws, &applied).await;
    assert!(
        reply.remote_config.is_none(),
        "RCFG-08: hashes match, nothing to resend"
    );
    assert_eq!(waiter.await.unwrap().unwrap(), RemoteConfigState::Applied);
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn ws_22_callback_can_throttle_with_unavailable() {
    let (recorder, _seen) = ServerRecorder::new();
    let recorder = recorder.reply_with(|_| {
        let mut reply = unavailable_response(Some(Duration::from_secs(7)));
        // Offers next to an error are dropped (MSG-05).
        reply.flags = 1;
        Some(reply)
    });
    let running = RunningServer::start(OpampServer::new(recorder)).await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(5);
    let reply = ws_exchange(&mut ws, &report(agent, 0)).await;
    let error = reply.error_response.expect("error response");
    assert_eq!(error.r#type(), ServerErrorResponseType::Unavailable);
    assert_eq!(
        error.details,
        Some(server_error_response::Details::RetryInfo(
            opamp_proto::RetryInfo {
                retry_after_nanoseconds: 7_000_000_000
            }
        ))
    );
    assert_eq!(reply.flags, 0, "MSG-05");
    assert_eq!(reply.instance_uid, agent.to_bytes());
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn cap_09_callback_offers_the_agent_cannot_take_are_removed() {
    let (recorder, _seen) = ServerRecorder::new();
    let recorder = recorder.reply_with(|_| {
        Some(ServerToAgent {
            packages_available: Some(Default::default()),
            remote_config: Some(Default::default()),
            ..Default::default()
        })
    });
    let running = RunningServer::start(OpampServer::new(recorder)).await;
    let mut ws = ws_connect(running.addr).await;
    let reply = ws_exchange(&mut ws, &report(uid(6), 0)).await;
    assert!(
        reply.packages_available.is_none(),
        "PKG-01: no AcceptsPackages"
    );
    assert!(reply.remote_config.is_some(), "AcceptsRemoteConfig is set");
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn err_02_malformed_messages_get_bad_request_and_the_connection_lives() {
    let (running, mut seen) = RunningServer::recorded().await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(7);
    ws_exchange(&mut ws, &report(agent, 0)).await;

    // WS-04: non-zero header.
    ws.send(WsMessage::Binary(Bytes::from_static(&[0x05, 0x0a, 0x00])))
        .await
        .unwrap();
    let reply = ws_recv(&mut ws).await;
    assert_eq!(
        reply.error_response.unwrap().r#type(),
        ServerErrorResponseType::BadRequest
    );
    assert_eq!(
        reply.instance_uid,
        agent.to_bytes(),
        "the connection's agent"
    );
    // Protobuf that lies about its length.
    ws.send(WsMessage::Binary(Bytes::from_static(&[
        0x00, 0x0a, 0x7f, 0x01,
    ])))
    .await
    .unwrap();
    assert!(ws_recv(&mut ws).await.error_response.is_some());
    // UID-03: a 3-byte uid.
    let mut short = heartbeat(agent, 1);
    short.instance_uid = Bytes::from_static(&[1, 2, 3]);
    let reply = ws_exchange(&mut ws, &short).await;
    assert_eq!(
        reply.error_response.unwrap().r#type(),
        ServerErrorResponseType::BadRequest
    );
    assert_eq!(
        reply.instance_uid,
        Bytes::from_static(&[1, 2, 3]),
        "echoed as received"
    );

    // Still alive.
    ws_send(&mut ws, &heartbeat(agent, 1)).await;
    assert!(ws_recv(&mut ws).await.error_response.is_none());
    let errors = std::iter::from_fn(|| seen.try_recv().ok())
        .filter(|event| matches!(event, ServerEvent::ReadError(_)))
        .count();
    assert_eq!(errors, 3);
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn ws_01_text_frames_close_the_connection() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let mut ws = ws_connect(running.addr).await;
    ws.send(WsMessage::Text("hello".into())).await.unwrap();
    assert_eq!(ws_close_code(&mut ws).await, Some(1003));
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn ws_18_disconnect_closes_with_a_close_frame() {
    let (running, mut seen) = RunningServer::recorded().await;
    let mut ws = ws_connect(running.addr).await;
    let agent = uid(8);
    ws_exchange(&mut ws, &report(agent, 0)).await;
    let connection = running.registry().connection(agent).expect("connected");
    connection.disconnect();
    assert_eq!(ws_close_code(&mut ws).await, Some(1000));
    let ServerEvent::Connected(id) = next_server_event(&mut seen).await else {
        panic!()
    };
    assert_eq!(id, connection.id());
    next_server_event(&mut seen).await;
    assert_eq!(
        next_server_event(&mut seen).await,
        ServerEvent::Disconnected(id, DisconnectReason::Requested)
    );
    assert!(connection.is_closed());
    assert!(connection.send(ServerToAgent::default()).is_err());
    drop(ws);
    running.stop().await;
}

#[tokio::test]
async fn uid_09_second_connection_with_the_same_uid_gets_a_new_one() {
    let running = RunningServer::start(OpampServer::builder().build()).await;
    let agent = uid(9);
    let mut first = ws_connect(running.addr).await;
    ws_exchange(&mut first, &report(agent, 0)).await;
    let mut second = ws_connect(running.addr).await;
    let reply = ws_exchange(&mut second, &report(agent, 0)).await;
    let new_uid = reply.new_instance_uid().expect("UID-09").unwrap();
    assert_ne!(new_uid, agent);
    // Both keep working under their own uids.
    ws_send(&mut second, &heartbeat(new_uid, 1)).await;
    assert_eq!(ws_recv(&mut second).await.instance_uid, new_uid.to_bytes());
    ws_send(&mut first, &heartbeat(agent, 1)).await;
    assert_eq!(ws_recv(&mut first).await.instance_uid, agent.to_bytes());
    assert_eq!(running.registry().connected().len(), 2);
    drop(first);
    drop(second);
    running.stop().await;
}

#[tokio::test]
async fn uid_10_refuse_policy_closes_the_duplicate() {
    let registry = opamp_server::Registry::builder()
        .duplicate_policy(opamp_server::DuplicateUidPolicy::Refuse)
        .build();
    let running = RunningServer::start(OpampServer::builder().registry(registry).build()).await;
    let agent = uid(10);
    let mut first = ws_connect(running.addr).await;
    ws_exchange(&mut first, &report(agent, 0)).await;
    let mut second = ws_connect(running.addr).await;
    let reply = ws_exchange(&mut second, &report(agent, 0)).await;
    assert_eq!(
        reply.error_response.unwrap().r#type(),
        ServerErrorResponseType::BadRequest
    );
    assert_eq!(ws_close_code(&mut second).await, Some(1008));
    // The first is untouched.
    ws_send(&mut first, &heartbeat(agent, 1)).await;
    assert!(ws_recv(&mut first).await.error_response.is_none());
    drop(first);
    drop(second);
    running.stop().await;
}
