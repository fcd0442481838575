//! The example agent binary against an in-test OpAMP server, over WebSocket
//! and plain HTTP: remote config is written to disk and reported APPLIED
//! with the new effective config; a bad config is FAILED and changes
//! nothing; restart, echo and instance-uid persistence work.

mod agent_support;

use agent_support::{
    AgentProcess, PATIENCE, TestServer, assert_contains, attribute, component_health, config,
    effective_body, state_dir,
};
use bytes::Bytes;
use opamp_proto::{
    CustomMessage, DownloadableFile, PackageAvailable, PackageStatusEnum, PackageType,
    PackagesAvailable, RemoteConfigStatuses,
};
use opamp_server::{RemoteConfigState, TransportKind};
use sha2::{Digest, Sha256};

async fn config_round_trip(scheme: &str, expected_transport: TransportKind) {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir(dir.path());
    let endpoint = server.endpoint(scheme);
    let args = ["--heartbeat", "1s", "--service-name", "checkout"];
    let agent = AgentProcess::start(&endpoint, dir.path(), "agent-1.log", &args);
    let (uid, transport) = server.next_connected().await;
    assert_eq!(transport, expected_transport);
    // UID-02: the uid is the one persisted in the state directory.
    let saved = std::fs::read_to_string(state.join("instance_uid")).unwrap();
    assert_eq!(saved.trim(), uid.to_string());

    let record = server
        .wait_for(uid, "the first full status", |record| {
            record.status.health.is_some() && record.status.description.is_some()
        })
        .await;
    let description = record.status.description.unwrap();
    assert_eq!(
        description
            .identifying("service.name")
            .and_then(|value| value.as_str()),
        Some("checkout")
    );

    // RCFG-06: pushed config → written to disk → APPLIED with its hash,
    // and the effective config read back from disk is reported. Two keys,
    // "" among them, with roles (spec v0.20.0): the report carries them.
    let body = "receivers:\n  otlp: {}\n";
    let mut pushed = config("collector.yaml", body);
    pushed.config_map.get_mut("collector.yaml").unwrap().role = "main".into();
    let mut expanded = config("", "receivers: {otlp: {}}\n");
    expanded.config_map.get_mut("").unwrap().role = "expanded".into();
    pushed.config_map.extend(expanded.config_map);
    let offer = server
        .registry
        .set_remote_config(uid, pushed.clone())
        .await
        .unwrap();
    let state_of_offer = server.config_outcome(uid, &offer.hash).await;
    assert_eq!(state_of_offer, RemoteConfigState::Applied);
    assert_eq!(
        std::fs::read_to_string(state.join("config").join("collector.yaml")).unwrap(),
        body
    );
    let record = server
        .wait_for(uid, "the new effective config", |record| {
            effective_body(record, "collector.yaml").as_deref() == Some(body.as_bytes())
        })
        .await;
    let effective = record.status.effective_config.unwrap().config_map;
    assert_eq!(
        effective.as_ref(),
        Some(&pushed),
        "keys, content types and roles"
    );
    assert_eq!(opamp_proto::config_hash(&pushed), offer.hash);

    // A config that fails validation: FAILED with a reason; disk and
    // effective config keep the applied one; health shows the failure.
    let bad = server
        .registry
        .set_remote_config(uid, config("collector.yaml", "invalid: true\n"))
        .await
        .unwrap();
    let failed = server.config_outcome(uid, &bad.hash).await;
    let RemoteConfigState::Failed { message } = failed else {
        panic!("expected FAILED, got {failed:?}");
    };
    assert_contains(&message, "invalid:");
    assert_eq!(
        std::fs::read_to_string(state.join("config").join("collector.yaml")).unwrap(),
        body
    );
    let record = server
        .wait_for(uid, "unhealthy config component", |record| {
            component_health(record, "config").is_some_and(|config| !config.healthy)
        })
        .await;
    assert_eq!(
        effective_body(&record, "collector.yaml").as_deref(),
        Some(body.as_bytes())
    );
    assert!(!record.status.health.unwrap().healthy);

    // CMD-01: the restart command restarts the simulated work.
    server.registry.restart(uid).await.unwrap();
    server
        .wait_for(uid, "a restarted pipeline", |record| {
            component_health(record, "pipeline")
                .and_then(|pipeline| attribute(pipeline, "restart_count"))
                .as_deref()
                == Some("1")
        })
        .await;

    // CUS-05: a custom message of the echo capability comes back as sent.
    let ping = CustomMessage {
        capability: "io.opamp-rs.echo".into(),
        r#type: "ping".into(),
        data: Bytes::from_static(b"hello"),
    };
    server
        .registry
        .send_custom_message(uid, ping.clone())
        .await
        .unwrap();
    let (from, echoed) = tokio::time::timeout(PATIENCE, server.custom.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, uid);
    assert_eq!(echoed, ping);

    // PKG-*: an add-on package is downloaded, checked and installed into
    // the state directory's package store, and listed as a component.
    let content = Bytes::from_static(b"plugin bytes\n");
    let served = content.clone();
    let (files, _files_task) =
        agent_support::serve_http(move |_request| http::Response::new(served.clone())).await;
    let package = PackageAvailable {
        r#type: PackageType::Addon as i32,
        version: "1.2.3".into(),
        file: Some(DownloadableFile {
            download_url: format!("http://{files}/plugin"),
            content_hash: Bytes::copy_from_slice(&Sha256::digest(&content)),
            signature: Bytes::new(),
            headers: None,
        }),
        hash: Bytes::from_static(b"plugin-1.2.3"),
    };
    let offer = server
        .registry
        .offer_packages(
            uid,
            PackagesAvailable {
                packages: [("plugin".to_owned(), package)].into(),
                all_packages_hash: Bytes::new(),
            },
        )
        .await
        .unwrap();
    let record = server
        .wait_for(uid, "the add-on installed and listed", |record| {
            let installed = record
                .status
                .package_statuses
                .as_ref()
                .is_some_and(|statuses| {
                    statuses.server_provided_all_packages_hash == offer.hash
                        && statuses
                            .packages
                            .get("plugin")
                            .is_some_and(|status| status.status() == PackageStatusEnum::Installed)
                });
            let listed = record
                .status
                .available_components
                .as_ref()
                .and_then(|available| available.components.get("packages"))
                .is_some_and(|packages| packages.sub_component_map.contains_key("plugin"));
            installed && listed
        })
        .await;
    assert_eq!(
        record.status.package_statuses.unwrap().packages["plugin"].agent_has_version,
        "1.2.3"
    );
    let stored: Vec<_> = std::fs::read_dir(state.join("packages").join("files"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(stored, [content.to_vec()]);

    // SIGTERM: the agent says goodbye (MSG-06) and exits cleanly.
    let status = agent.terminate().await;
    assert!(status.success(), "{status}");
    server.wait_disconnected(uid).await;

    // Restarted on the same state: same uid, and the applied config is
    // reported (not re-applied) from the saved status.
    let agent = AgentProcess::start(&endpoint, dir.path(), "agent-2.log", &args);
    let (again, _) = server.next_connected().await;
    assert_eq!(again, uid);
    let record = server
        .wait_for(uid, "the status after a restart", |record| {
            record.status.remote_config_status.is_some() && record.status.effective_config.is_some()
        })
        .await;
    let status = record.status.remote_config_status.clone().unwrap();
    // The last status saved was the FAILED one, for the bad hash.
    assert_eq!(status.last_remote_config_hash, bad.hash);
    assert_eq!(status.status(), RemoteConfigStatuses::Failed);
    assert_eq!(
        record.status.effective_config.unwrap().config_map,
        Some(pushed),
        "roles survive an agent restart"
    );
    assert!(agent.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_agent_applies_config_and_reports_it() {
    config_round_trip("ws", TransportKind::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_agent_applies_config_and_reports_it() {
    config_round_trip("http", TransportKind::PlainHttp).await;
}
