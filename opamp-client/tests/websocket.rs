//! The client over WebSocket against an in-test server on 127.0.0.1:0.
//! Every wait is on a channel; no test sleeps or reads the wall clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Reply, TestServer, client_with, description, opamp_offer, retrying_client, settings_status,
    switching_client,
};
use opamp_client::{AgentCapabilities, OpampClient};
use opamp_proto::{
    AgentConfigMap, AgentConfigObject, AgentIdentification, AgentRemoteConfig, CommandType,
    ConnectionSettingsStatuses, CustomCapabilities, CustomMessage, InstanceUid, RemoteConfigStatus,
    RemoteConfigStatuses, RetryInfo, ServerErrorResponse, ServerErrorResponseType, ServerToAgent,
    ServerToAgentCommand, ServerToAgentFlags, server_error_response,
};
use opamp_testkit::{ClientEvent, ClientRecorder, ack, expect_client_event, quick_retry, within};

fn remote_config(hash: &'static [u8]) -> AgentRemoteConfig {
    AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: [(
                String::new(),
                AgentConfigObject {
                    body: Bytes::from_static(b"a: 1"),
                    content_type: "text/yaml".into(),
                    ..Default::default()
                },
            )]
            .into(),
        }),
        config_hash: Bytes::from_static(hash),
    }
}

#[tokio::test]
async fn sts_01_rcfg_06_ws_17_first_message_remote_config_and_goodbye() {
    let mut server = TestServer::start(|conn, message| {
        if message.sequence_num == 0 {
            Reply::Message(ServerToAgent {
                remote_config: Some(remote_config(b"cfg-1")),
                ..ack(message)
            })
        } else {
            let _ = conn;
            Reply::Message(ack(message))
        }
    })
    .await;
    let (mut recorder, mut seen) = ClientRecorder::new();
    recorder.on_message = Box::new(|client, data| {
        if let Some(config) = &data.remote_config {
            client.set_remote_config_status(RemoteConfigStatus {
                last_remote_config_hash: config.config_hash.clone(),
                status: RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            });
        }
    });
    let client = client_with(
        server.ws_url(),
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG | AgentCapabilities::REPORTS_REMOTE_CONFIG,
        recorder,
    );
    client.start().await.unwrap();

    let first = server.next().await.message;
    assert_eq!(first.sequence_num, 0);
    assert_eq!(first.agent_description, Some(description()));
    assert_eq!(first.instance_uid, client.instance_uid().to_bytes());
    expect_client_event(&mut seen, |s| matches!(s, ClientEvent::Connect)).await;

    let status = server
        .next_matching(|r| r.message.remote_config_status.is_some())
        .await
        .message;
    assert_eq!(status.sequence_num, 1);
    let status = status.remote_config_status.unwrap();
    assert_eq!(status.last_remote_config_hash, Bytes::from_static(b"cfg-1"));
    assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);

    client.stop().await;
    let last = server.next().await.message;
    assert!(last.agent_disconnect.is_some());
    let (conn, close) = within("the connection to close", server.closed.recv())
        .await
        .unwrap();
    assert_eq!(conn, 1);
    assert_eq!(
        close.map(|c| c.code),
        Some(1000),
        "WS-17: a Close frame, not a dropped socket"
    );
    assert!(client.is_stopped());
}

#[tokio::test]
async fn ws_24_refused_upgrade_honours_retry_after() {
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    server.refuse_upgrades(1, Some(0));
    let (client, hints, mut seen) = retrying_client(server.ws_url(), None);
    client.start().await.unwrap();
    let failed =
        expect_client_event(&mut seen, |s| matches!(s, ClientEvent::ConnectFailed(_))).await;
    assert!(format!("{failed:?}").contains("503"), "{failed:?}");
    let first = server.next().await;
    assert_eq!(first.conn, 1);
    assert_eq!(first.message.sequence_num, 0);
    assert_eq!(hints.lock().unwrap().first(), Some(&Some(Duration::ZERO)));
    client.stop().await;
}

#[tokio::test]
async fn ws_19_seq_05_reconnects_after_the_server_drops_the_connection() {
    // Like a real server, ask for the full state when a sequence number is
    // skipped (SEQ-05): whatever went into the dying connection is lost.
    let mut last_seq: Option<u64> = None;
    let mut server = TestServer::start(move |conn, message| {
        let gap = last_seq.is_some_and(|last| message.sequence_num != last + 1);
        last_seq = Some(message.sequence_num);
        if conn == 1 {
            Reply::Drop
        } else if gap {
            Reply::Message(ServerToAgent {
                flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
                ..ack(message)
            })
        } else {
            Reply::Message(ack(message))
        }
    })
    .await;
    let (retry, _) = quick_retry();
    let client = OpampClient::builder(server.ws_url())
        .agent_description(description())
        .capabilities(AgentCapabilities::REPORTS_HEALTH)
        .retry_policy(retry)
        .build()
        .unwrap();
    client.set_health(opamp_proto::ComponentHealth {
        healthy: true,
        ..Default::default()
    });
    client.start().await.unwrap();
    assert_eq!(server.next().await.conn, 1);
    client.set_health(opamp_proto::ComponentHealth {
        healthy: false,
        ..Default::default()
    });
    // The change arrives on the new connection, sent directly or as part of
    // the full state.
    server
        .next_matching(|r| r.conn == 2 && r.message.health.as_ref().is_some_and(|h| !h.healthy))
        .await;
    client.stop().await;
}

#[tokio::test]
async fn ws_23_unavailable_disconnects_waits_and_reconnects_with_full_state() {
    let mut server = TestServer::start(|conn, message| {
        if conn == 1 && message.agent_disconnect.is_none() {
            Reply::Message(ServerToAgent {
                error_response: Some(ServerErrorResponse {
                    r#type: ServerErrorResponseType::Unavailable as i32,
                    error_message: "busy".into(),
                    details: Some(server_error_response::Details::RetryInfo(RetryInfo {
                        retry_after_nanoseconds: 1_000_000,
                    })),
                }),
                ..ack(message)
            })
        } else {
            Reply::Message(ack(message))
        }
    })
    .await;
    let (client, hints, mut seen) = retrying_client(server.ws_url(), None);
    client.start().await.unwrap();
    assert_eq!(server.next().await.conn, 1);
    // WS-21: a deliberate reconnect says goodbye first, then closes.
    let goodbye = server.next().await;
    assert_eq!(goodbye.conn, 1);
    assert!(goodbye.message.agent_disconnect.is_some());
    let (closed, _) = within("the connection to close", server.closed.recv())
        .await
        .unwrap();
    assert_eq!(closed, 1);
    let again = server.next().await;
    assert_eq!(again.conn, 2);
    assert!(
        again.message.agent_description.is_some(),
        "full state after UNAVAILABLE"
    );
    assert!(
        hints
            .lock()
            .unwrap()
            .contains(&Some(Duration::from_millis(1)))
    );
    expect_client_event(&mut seen, |s| matches!(s, ClientEvent::ErrorResponse(_))).await;
    client.stop().await;
}

#[tokio::test]
async fn slow_callback_does_not_stall_the_connection() {
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let (recorder, mut seen) = ClientRecorder::new();
    let (release, gate) = std::sync::mpsc::channel();
    *recorder.gate.lock().unwrap() = Some(gate);
    let client = client_with(
        server.ws_url(),
        AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
        recorder,
    );
    client.start().await.unwrap();
    server.next().await;
    // The config callback blocks ...
    server.push(
        1,
        ServerToAgent {
            remote_config: Some(remote_config(b"c")),
            ..Default::default()
        },
    );
    // ... while the server asks for the full state and gets it (SEQ-06).
    server.push(
        1,
        ServerToAgent {
            flags: ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            ..Default::default()
        },
    );
    let full = server.next().await.message;
    assert!(full.agent_description.is_some());
    release.send(()).unwrap();
    expect_client_event(
        &mut seen,
        |s| matches!(s, ClientEvent::Message(data) if data.remote_config.is_some()),
    )
    .await;
    client.stop().await;
}

#[tokio::test]
async fn uid_08_cmd_01_cus_new_uid_command_and_custom_messages() {
    let new_uid = InstanceUid::from([5; 16]);
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let (recorder, mut seen) = ClientRecorder::new();
    let client = client_with(
        server.ws_url(),
        AgentCapabilities::ACCEPTS_RESTART_COMMAND,
        recorder,
    );
    client.set_custom_capabilities(CustomCapabilities {
        capabilities: vec!["io.example.echo".into()],
    });
    client.start().await.unwrap();
    let first = server.next().await.message;
    assert!(first.custom_capabilities.is_some());

    server.push(
        1,
        ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: new_uid.to_bytes(),
            }),
            ..Default::default()
        },
    );
    expect_client_event(
        &mut seen,
        |s| matches!(s, ClientEvent::NewUid(uid) if *uid == new_uid),
    )
    .await;
    assert_eq!(client.instance_uid(), new_uid);

    let message = CustomMessage {
        capability: "io.example.echo".into(),
        r#type: "hi".into(),
        data: Bytes::from_static(b"x"),
    };
    client.send_custom_message(message.clone()).unwrap();
    client.custom_message_sent().await;
    let sent = server
        .next_matching(|r| r.message.custom_message.is_some())
        .await
        .message;
    assert_eq!(sent.custom_message, Some(message.clone()));
    assert_eq!(
        sent.instance_uid,
        new_uid.to_bytes(),
        "UID-08: the new uid is used"
    );

    // CUS-04: a custom message for the declared capability reaches the agent.
    server.push(
        1,
        ServerToAgent {
            custom_message: Some(message.clone()),
            ..Default::default()
        },
    );
    expect_client_event(
        &mut seen,
        |s| matches!(s, ClientEvent::Message(d) if d.custom_message == Some(message.clone())),
    )
    .await;

    server.push(
        1,
        ServerToAgent {
            command: Some(ServerToAgentCommand {
                r#type: CommandType::Restart as i32,
            }),
            ..Default::default()
        },
    );
    expect_client_event(&mut seen, |s| matches!(s, ClientEvent::Command(_))).await;
    client.stop().await;
}

#[tokio::test]
async fn cs_05_cs_08_switch_to_verified_new_server() {
    let mut old = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let mut new = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let (client, mut seen) = switching_client(old.ws_url()).await;
    old.next().await;
    old.push(1, opamp_offer(new.ws_url(), b"switch-1"));
    // CS-07: APPLYING, then goodbye to the old server (WS-21).
    let applying = old
        .next_matching(|r| r.message.connection_settings_status.is_some())
        .await
        .message;
    assert_eq!(
        applying.connection_settings_status.unwrap().status,
        ConnectionSettingsStatuses::Applying as i32
    );
    old.next_goodbye().await;
    // The new server gets the full state and then APPLIED (CS-08).
    let first = new.next().await.message;
    assert!(first.agent_description.is_some());
    let applied = settings_status(&mut new, first, ConnectionSettingsStatuses::Applied).await;
    assert_eq!(applied.status, ConnectionSettingsStatuses::Applied as i32);
    assert_eq!(
        applied.last_connection_settings_hash,
        Bytes::from_static(b"switch-1")
    );
    let outcome =
        expect_client_event(&mut seen, |s| matches!(s, ClientEvent::OpampOutcome(..))).await;
    assert!(matches!(outcome, ClientEvent::OpampOutcome(_, Ok(()))));
    client.stop().await;
    new.next_goodbye().await;
}

#[tokio::test]
async fn cs_06_failed_switch_rolls_back_and_reports_failed() {
    let mut old = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    // A port nobody listens on.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("ws://{}/v1/opamp", unused.local_addr().unwrap());
    drop(unused);
    let (client, mut seen) = switching_client(old.ws_url()).await;
    old.next().await;
    old.push(1, opamp_offer(dead, b"switch-2"));
    old.next_goodbye().await;
    // Back on the old server (a second connection), reporting FAILED.
    let failed = old
        .next_matching(|r| {
            r.conn == 2
                && r.message
                    .connection_settings_status
                    .as_ref()
                    .is_some_and(|s| s.status == ConnectionSettingsStatuses::Failed as i32)
        })
        .await;
    let status = failed.message.connection_settings_status.unwrap();
    assert_eq!(
        status.last_connection_settings_hash,
        Bytes::from_static(b"switch-2")
    );
    assert!(!status.error_message.is_empty());
    let outcome =
        expect_client_event(&mut seen, |s| matches!(s, ClientEvent::OpampOutcome(..))).await;
    assert!(matches!(outcome, ClientEvent::OpampOutcome(_, Err(_))));
    client.stop().await;
}
