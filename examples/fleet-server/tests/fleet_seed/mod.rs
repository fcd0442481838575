//! A large fleet for the page and the agent list, written straight into a
//! fleet store through its `AgentStore` side (the records the registry
//! would have saved), so a test gets 10,000 agents in a second or two
//! instead of 10,000 OpAMP sessions. Shared by `tests/browser.rs` and
//! `examples/fleet_page_time.rs`.
#![allow(dead_code, unreachable_pub)]

use std::time::SystemTime;

use bytes::Bytes;
use opamp_fleet_server::FleetStore;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDescription, AgentRemoteConfig,
    ComponentHealth, EffectiveConfig, InstanceUid, RemoteConfigStatus, RemoteConfigStatuses,
    config_hash,
};
use opamp_server::{AgentRecord, AgentStore};

/// Services the seeded agents belong to, by `index % 5`.
pub const SERVICES: [&str; 5] = ["checkout", "payments", "frontend", "inventory", "search"];

/// The uid of seeded agent `index`: a UUIDv7 shape whose order is the
/// index order.
pub fn seeded_uid(index: u32) -> InstanceUid {
    let mut bytes = [0u8; 16];
    bytes[0] = 0x02;
    bytes[2..6].copy_from_slice(&index.to_be_bytes());
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    bytes[15] = 0x5e;
    InstanceUid::from_array(bytes)
}

/// `host-00042` for index 42.
pub fn seeded_host(index: u32) -> String {
    format!("host-{index:05}")
}

/// Health by `index % 10`: 0 unhealthy, 1 not reported, else healthy.
pub fn seeded_health(index: u32) -> Option<bool> {
    match index % 10 {
        0 => Some(false),
        1 => None,
        _ => Some(true),
    }
}

/// Remote config by `index % 4`: 0 none, 1 applied, 2 failed, 3 pending.
pub fn seeded_config_state(index: u32) -> &'static str {
    ["none", "applied", "failed", "pending"][(index % 4) as usize]
}

fn config(body: String) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        "collector.yaml".into(),
        AgentConfigObject {
            body: Bytes::from(body),
            content_type: "text/yaml".into(),
            ..Default::default()
        },
    );
    config
}

/// One seeded agent's record: description, health, an effective config of
/// a few hundred bytes and, by index, a remote config and its outcome.
pub fn seeded_record(index: u32) -> AgentRecord {
    let now = SystemTime::now();
    let mut record = AgentRecord::new(seeded_uid(index), now);
    let service = SERVICES[(index % 5) as usize];
    record.status.capabilities = AgentCapabilities::REPORTS_STATUS
        | AgentCapabilities::ACCEPTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::REPORTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_HEALTH;
    record.status.description = Some(
        AgentDescription::for_service(service, format!("1.{}.0", index % 3))
            .with_non_identifying("host.name", seeded_host(index))
            .with_non_identifying("os.type", "linux"),
    );
    record.status.health = seeded_health(index).map(|healthy| ComponentHealth {
        healthy,
        status: if healthy { "running" } else { "degraded" }.into(),
        ..Default::default()
    });
    let effective = config(format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{}}\n      http: {{}}\nexporters:\n  \
         otlphttp:\n    endpoint: https://collector.example:4318\nservice:\n  pipelines:\n    \
         traces:\n      receivers: [otlp]\n      exporters: [otlphttp]\n# {service} on {}\n",
        seeded_host(index)
    ));
    record.status.effective_config = Some(EffectiveConfig {
        config_map: Some(effective.clone()),
    });
    let state = seeded_config_state(index);
    if state != "none" {
        let hash = config_hash(&effective);
        record.desired.remote_config = Some(AgentRemoteConfig {
            config: Some(effective),
            config_hash: hash.clone(),
        });
        let reported = match state {
            "applied" => Some(RemoteConfigStatuses::Applied),
            "failed" => Some(RemoteConfigStatuses::Failed),
            _ => None,
        };
        record.status.remote_config_status = reported.map(|status| RemoteConfigStatus {
            last_remote_config_hash: hash,
            status: status as i32,
            error_message: if status == RemoteConfigStatuses::Failed {
                "exporter otlphttp: bad endpoint".into()
            } else {
                String::new()
            },
        });
    }
    record
}

/// Saves agents `0..count` into `store`, a few saves at a time.
pub async fn seed_fleet(store: &FleetStore, count: u32) {
    let mut saves: tokio::task::JoinSet<Result<(), opamp_server::StoreError>> =
        tokio::task::JoinSet::new();
    for index in 0..count {
        if saves.len() >= 8
            && let Some(saved) = saves.join_next().await
        {
            saved.expect("seeding task").expect("seeded record saved");
        }
        let store = store.clone();
        saves.spawn(async move { AgentStore::save(&store, seeded_record(index)).await });
    }
    while let Some(saved) = saves.join_next().await {
        saved.expect("seeding task").expect("seeded record saved");
    }
}
