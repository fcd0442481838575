//! The client over plain HTTP against an in-test server on 127.0.0.1:0.
//! Every wait is on a channel; no test sleeps or reads the wall clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{
    Reply, TestServer, client_with, description, opamp_offer, retrying_client, settings_status,
    switching_client,
};
use http::StatusCode;
use opamp_client::Callbacks as _;
use opamp_client::{AgentCapabilities, MemoryPackageStore, OpampClient};
use opamp_proto::{
    ComponentHealth, ConnectionSettingsStatuses, DownloadableFile, PackageAvailable,
    PackageStatusEnum, PackageStatuses, PackageType, PackagesAvailable, ServerToAgent,
};
use opamp_testkit::{ClientEvent, ClientRecorder, ack, expect_client_event};
use sha2::{Digest, Sha256};

fn health(healthy: bool) -> ComponentHealth {
    ComponentHealth {
        healthy,
        ..Default::default()
    }
}

#[tokio::test]
async fn sts_01_http_08_http_12_first_message_then_minimal_polls() {
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let client = OpampClient::builder(server.http_url())
        .agent_description(description())
        .polling_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    client.start().await.unwrap();
    let first = server.next().await;
    assert_eq!(first.message.sequence_num, 0);
    assert!(first.message.agent_description.is_some());
    // HTTP-03, HTTP-08.
    assert_eq!(
        first.headers[http::header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    assert_eq!(
        first.headers["opamp-instance-uid"],
        client.instance_uid().to_string()
    );
    let poll = server.next().await.message;
    assert_eq!(poll.sequence_num, 1);
    assert!(poll.agent_description.is_none());
    assert_eq!(poll.instance_uid, client.instance_uid().to_bytes());
    assert_eq!(poll.capabilities, AgentCapabilities::REPORTS_STATUS.bits());
    client.stop().await;
}

#[tokio::test]
async fn err_06_http_21_busy_server_keeps_pending_state() {
    let mut server = TestServer::start(|request, message| {
        if request == 2 {
            Reply::Status(StatusCode::SERVICE_UNAVAILABLE, Some(0))
        } else {
            Reply::Message(ack(message))
        }
    })
    .await;
    let (client, hints, mut seen) =
        retrying_client(server.http_url(), Some(AgentCapabilities::REPORTS_HEALTH));
    client.set_health(health(true));
    client.start().await.unwrap();
    server.next().await;
    client.set_health(health(false));
    let refused = server.next().await;
    assert_eq!(refused.conn, 2);
    assert_eq!(refused.message.health, Some(health(false)));
    // Retried with the same content and sequence number.
    let retried = server.next().await;
    assert_eq!(retried.conn, 3);
    assert_eq!(retried.message.health, Some(health(false)));
    assert_eq!(retried.message.sequence_num, refused.message.sequence_num);
    assert_eq!(hints.lock().unwrap().as_slice(), &[Some(Duration::ZERO)]);
    expect_client_event(
        &mut seen,
        |s| matches!(s, ClientEvent::ConnectFailed(e) if e.contains("503")),
    )
    .await;
    client.stop().await;
}

#[tokio::test]
async fn http_17_payload_too_large_is_not_retried() {
    let mut server = TestServer::start(|request, message| {
        if request == 2 {
            Reply::Status(StatusCode::PAYLOAD_TOO_LARGE, None)
        } else {
            Reply::Message(ack(message))
        }
    })
    .await;
    let client = OpampClient::builder(server.http_url())
        .agent_description(description())
        .capabilities(
            AgentCapabilities::REPORTS_HEALTH | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG,
        )
        .build()
        .unwrap();
    client.set_health(health(true));
    client.start().await.unwrap();
    server.next().await;
    client.set_health(health(false));
    let refused = server.next().await;
    assert!(refused.message.health.is_some());
    client.set_effective_config(opamp_proto::EffectiveConfig::default());
    let next = server.next().await.message;
    assert!(next.health.is_none(), "the refused content is not resent");
    assert!(next.effective_config.is_some());
    assert_eq!(next.sequence_num, refused.message.sequence_num + 1);
    client.stop().await;
}

#[tokio::test]
async fn http_24_stop_sends_agent_disconnect() {
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let client = OpampClient::builder(server.http_url())
        .agent_description(description())
        .build()
        .unwrap();
    client.start().await.unwrap();
    server.next().await;
    client.stop().await;
    let last = server.next().await.message;
    assert!(last.agent_disconnect.is_some());
    assert!(client.is_stopped());
}

/// A server whose first reply carries `offer`; later replies are acks.
async fn offering_server(offer: ServerToAgent) -> TestServer {
    let mut offered = false;
    TestServer::start(move |_, message| {
        if offered {
            Reply::Message(ack(message))
        } else {
            offered = true;
            Reply::Message(ServerToAgent {
                instance_uid: message.instance_uid.clone(),
                ..offer.clone()
            })
        }
    })
    .await
}

#[tokio::test]
async fn cs_05_http_switch_to_verified_new_server() {
    let mut new = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let mut old = offering_server(opamp_offer(new.http_url(), b"h-http")).await;
    let (client, mut seen) = switching_client(old.http_url()).await;
    old.next().await;
    // HTTP-24: goodbye to the old server before switching.
    old.next_goodbye().await;
    let first = new.next().await.message;
    assert!(
        first.agent_description.is_some(),
        "full state to the new server"
    );
    let applied = settings_status(&mut new, first, ConnectionSettingsStatuses::Applied).await;
    assert_eq!(applied.status, ConnectionSettingsStatuses::Applied as i32);
    assert_eq!(
        applied.last_connection_settings_hash,
        Bytes::from_static(b"h-http")
    );
    expect_client_event(&mut seen, |s| {
        matches!(s, ClientEvent::OpampOutcome(_, Ok(())))
    })
    .await;
    client.stop().await;
    new.next_goodbye().await;
}

#[tokio::test]
async fn cs_06_cs_08_http_failed_switch_goes_back_to_the_old_server() {
    // A port nobody listens on.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/v1/opamp", unused.local_addr().unwrap());
    drop(unused);
    let mut old = offering_server(opamp_offer(dead, b"h-dead")).await;
    let (client, mut seen) = switching_client(old.http_url()).await;
    old.next().await;
    old.next_goodbye().await;
    // CS-06 step 9: back on the old server, with the full state and FAILED.
    let back = old
        .next_matching(|r| {
            r.message
                .connection_settings_status
                .as_ref()
                .is_some_and(|s| s.status == ConnectionSettingsStatuses::Failed as i32)
        })
        .await
        .message;
    assert!(
        back.agent_description.is_some(),
        "full state after rollback"
    );
    let status = back.connection_settings_status.unwrap();
    assert_eq!(
        status.last_connection_settings_hash,
        Bytes::from_static(b"h-dead")
    );
    assert!(!status.error_message.is_empty());
    expect_client_event(&mut seen, |s| {
        matches!(s, ClientEvent::OpampOutcome(_, Err(_)))
    })
    .await;
    client.stop().await;
    old.next_goodbye().await;
}

/// A started client that takes packages into memory, and the server that
/// offers it `packages`.
async fn client_offered(
    packages: PackagesAvailable,
    recorder: ClientRecorder,
) -> (OpampClient, TestServer) {
    let server = offering_server(ServerToAgent {
        packages_available: Some(packages),
        ..Default::default()
    })
    .await;
    let client = OpampClient::builder(server.http_url())
        .agent_description(description())
        .capabilities(
            AgentCapabilities::ACCEPTS_PACKAGES | AgentCapabilities::REPORTS_PACKAGE_STATUSES,
        )
        .package_store(Arc::new(MemoryPackageStore::new()))
        .callbacks(recorder)
        .build()
        .unwrap();
    client.start().await.unwrap();
    (client, server)
}

/// The first package statuses `server` receives with the package "addon"
/// in `status`.
async fn addon_reported(server: &mut TestServer, status: PackageStatusEnum) -> PackageStatuses {
    server
        .next_matching(|r| {
            r.message.package_statuses.as_ref().is_some_and(|s| {
                s.packages
                    .get("addon")
                    .is_some_and(|p| p.status == status as i32)
            })
        })
        .await
        .message
        .package_statuses
        .unwrap()
}

#[tokio::test]
async fn pkg_06_pkg_08_pkg_13_packages_are_downloaded_verified_and_reported() {
    let content = Bytes::from_static(b"#!/bin/sh\necho addon\n");
    // The download URL needs the server's address, so the offer is pushed
    // through a second server that serves the file.
    let files = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    files.serve_file("/files/addon", content.clone());
    let offer = |content_hash: Bytes| PackagesAvailable {
        packages: [(
            "addon".to_owned(),
            PackageAvailable {
                r#type: PackageType::Addon as i32,
                version: "1.0".into(),
                file: Some(DownloadableFile {
                    download_url: format!("http://{}/files/addon", files.addr),
                    content_hash,
                    ..Default::default()
                }),
                hash: Bytes::from_static(b"pkg-hash"),
            },
        )]
        .into(),
        all_packages_hash: Bytes::from_static(b"all-1"),
    };
    let good = offer(Bytes::from(Sha256::digest(&content).to_vec()));
    let (recorder, mut seen) = ClientRecorder::new();
    let (client, mut server) = client_offered(good, recorder).await;
    let installed = addon_reported(&mut server, PackageStatusEnum::Installed).await;
    assert_eq!(
        installed.server_provided_all_packages_hash,
        Bytes::from_static(b"all-1")
    );
    assert_eq!(
        installed.packages["addon"].agent_has_hash,
        Bytes::from_static(b"pkg-hash")
    );
    expect_client_event(
        &mut seen,
        |s| matches!(s, ClientEvent::Package(text) if text.contains("Installed")),
    )
    .await;
    client.stop().await;

    // A wrong content hash: the download is refused, reported InstallFailed.
    let bad = offer(Bytes::from(vec![0u8; 32]));
    let (client, mut server) = client_offered(bad, ClientRecorder::new().0).await;
    let failed = addon_reported(&mut server, PackageStatusEnum::InstallFailed).await;
    assert!(!failed.packages["addon"].error_message.is_empty());
    client.stop().await;
}

struct ConfigProvider;

impl opamp_client::Callbacks for ConfigProvider {
    fn effective_config(&self) -> Option<opamp_proto::EffectiveConfig> {
        Some(opamp_proto::EffectiveConfig {
            config_map: Some(opamp_proto::AgentConfigMap::default()),
        })
    }
}

#[tokio::test]
async fn ecfg_02_effective_config_provider_feeds_the_first_message() {
    let mut server = TestServer::start(|_, message| Reply::Message(ack(message))).await;
    let client = client_with(
        server.http_url(),
        AgentCapabilities::REPORTS_EFFECTIVE_CONFIG,
        ConfigProvider,
    );
    client.start().await.unwrap();
    let first = server.next().await.message;
    assert_eq!(first.effective_config, ConfigProvider.effective_config());
    client.stop().await;
}
