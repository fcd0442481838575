//! The embedded redb store: what the registry and the fleet keep survives
//! closing and reopening the file.

mod server_common;

use axum::body::Body;
use http::{Method, StatusCode};
use opamp_fleet_server::{FleetOptions, FleetServer, FleetStore};
use opamp_proto::{InstanceUid, RemoteConfigStatuses, config_hash};
use opamp_server::{AgentRecord, AgentStore};
use server_common::*;

#[tokio::test]
async fn records_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let uid = InstanceUid::new_v7();
    {
        let store = FleetStore::open(dir.path()).unwrap();
        let mut record = AgentRecord::new(uid, std::time::SystemTime::now());
        record.status.description = Some(opamp_proto::AgentDescription::for_service(
            "checkout", "1.0",
        ));
        store.save(record).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 1);
    }
    let store = FleetStore::open(dir.path()).unwrap();
    let record = store.load(uid).await.unwrap().expect("record kept");
    assert_eq!(
        record
            .status
            .description
            .unwrap()
            .identifying("service.name")
            .unwrap()
            .as_str(),
        Some("checkout")
    );
    store.remove(uid).await.unwrap();
    assert!(store.load(uid).await.unwrap().is_none());
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = FleetStore::open(dir.path()).unwrap();
    assert!(
        FleetStore::open(dir.path()).is_err(),
        "two servers must not share one file"
    );
}

/// The whole fleet (agents, configs, groups, history, events) over a
/// reopened store.
#[tokio::test]
async fn fleet_state_survives_a_restart_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let options = || FleetOptions {
        packages_dir: dir.path().join("packages"),
        download_base_url: DOWNLOAD_BASE.into(),
        websocket_endpoint: "ws://127.0.0.1:4320/v1/opamp".into(),
        http_endpoint: "http://127.0.0.1:4320/v1/opamp".into(),
        ..Default::default()
    };
    // Two keys with roles (spec v0.20.0) must survive the store as well.
    let mut expected = config("", "text/yaml", "group: 1");
    expected.config_map.get_mut("").unwrap().role = "expanded".into();
    expected.config_map.insert(
        "group.yaml".into(),
        opamp_proto::AgentConfigObject {
            body: "group: ${G}".into(),
            content_type: "text/yaml".into(),
            role: "source".into(),
        },
    );
    let hash = config_hash(&expected);
    {
        let fleet = FleetServer::new(
            FleetStore::open(&dir.path().join("data")).unwrap(),
            options(),
        );
        let app = fleet
            .api_router()
            .route_service("/v1/opamp", fleet.opamp_builder().build());
        let h = Harness {
            app,
            fleet: fleet.clone(),
            dir: tempfile::tempdir().unwrap(),
        };
        let group = serde_json::json!({
            "selector": { "service.name": "cart" },
            "config": { "files": {
                "": { "content_type": "text/yaml", "body": "group: 1", "role": "expanded" },
                "group.yaml": { "content_type": "text/yaml", "body": "group: ${G}", "role": "source" }
            } }
        });
        let (status, _) = h
            .json(Method::PUT, "/api/config/groups/all-carts", group)
            .await;
        assert_eq!(status, StatusCode::OK);
        let mut agent = TestAgent::new(uid(1), "cart", FULL_CAPABILITIES);
        let offer = h.config_offer(&agent.hello()).await;
        assert_eq!(offer.config_hash, hash);
        assert_eq!(offer.config.as_ref(), Some(&expected));
        let mut events = h.events().await;
        h.poll(&agent.report(&hash, RemoteConfigStatuses::Applied, Some(expected.clone())))
            .await;
        h.detail_with_outcome(&mut events, uid(1), "APPLIED").await;
        fleet.stop().await;
    }
    // Everything above is dropped, so the file can be opened again.
    let fleet = FleetServer::new(
        FleetStore::open(&dir.path().join("data")).unwrap(),
        options(),
    );
    let app = fleet.api_router();
    let path = agent_path(uid(1), "");
    let (status, detail) = call_app(&app, Method::GET, &path, None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["connected"], false);
    assert_eq!(detail["desired_config"]["config_hash"], hex::encode(&hash));
    assert_eq!(detail["desired_config"]["state"], "APPLIED");
    assert_eq!(detail["desired_config"]["source"]["name"], "all-carts");
    assert_eq!(detail["config_history"][0]["outcome"], "APPLIED");
    for view in ["desired_config", "effective_config"] {
        assert_eq!(detail[view]["bodies"][""]["role"], "expanded", "{view}");
        assert_eq!(
            detail[view]["bodies"]["group.yaml"]["role"], "source",
            "{view}"
        );
    }
    assert!(!detail["events"].as_array().unwrap().is_empty());
    let (status, config) = call_app(&app, Method::GET, "/api/config", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        config["groups"]["all-carts"]["selector"]["service.name"],
        "cart"
    );
    assert_eq!(
        config["groups"]["all-carts"]["config"]["files"]["group.yaml"]["role"],
        "source"
    );
    fleet.stop().await;
}
