//! The benchmark messages, described precisely enough to rebuild them in
//! another language: every string, number and byte below is fixed.

use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDescription, AgentRemoteConfig,
    AgentToServer, AnyValue, AvailableComponents, ComponentDetails, ComponentHealth,
    DownloadableFile, EffectiveConfig, Header, Headers, KeyValue, PackageAvailable, PackageStatus,
    PackageStatusEnum, PackageStatuses, PackageType, PackagesAvailable, RemoteConfigStatus,
    RemoteConfigStatuses, ServerToAgent,
};

/// The instance uid every benchmark message carries:
/// `0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f`.
pub const UID: [u8; 16] = [
    0x01, 0x91, 0xe3, 0xa8, 0xc4, 0xb2, 0x7c, 0x3d, 0x8e, 0x9f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f,
];

/// Base time for the health tree, Unix nanoseconds.
const T0: u64 = 1_700_000_000_000_000_000;

fn uid() -> bytes::Bytes {
    bytes::Bytes::from_static(&UID)
}

/// `n` bytes of printable text: byte `i` is `b'a' + (i % 26)`.
pub fn filler(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A heartbeat: uid, `sequence_num` 42 and capabilities `0x781f`
/// (status, remote config, effective config, packages, package statuses,
/// health, remote config status, heartbeat, available components).
pub fn heartbeat() -> AgentToServer {
    AgentToServer {
        instance_uid: uid(),
        sequence_num: 42,
        capabilities: capabilities().bits(),
        ..Default::default()
    }
}

fn capabilities() -> AgentCapabilities {
    AgentCapabilities::REPORTS_STATUS
        | AgentCapabilities::ACCEPTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
        | AgentCapabilities::ACCEPTS_PACKAGES
        | AgentCapabilities::REPORTS_PACKAGE_STATUSES
        | AgentCapabilities::REPORTS_HEALTH
        | AgentCapabilities::REPORTS_REMOTE_CONFIG
        | AgentCapabilities::REPORTS_HEARTBEAT
        | AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS
}

/// A first full status report:
/// - description: identifying `service.name` = `io.opentelemetry.collector`,
///   `service.version` = `1.2.3`, `service.instance.id` = the uid string,
///   `service.namespace` = `bench`, then non-identifying `attr.NN` = `value-NN`
///   for NN in 00..=15 (20 attributes in all);
/// - health: a root (healthy, start T0, status `running`, time T0+1) with 10
///   components `component-N` (N 0..=9; healthy unless N == 7, which has
///   last_error `exporter queue full`; status `ok`; start T0+N, time T0+N+1;
///   no `attributes`, which opamp-go's types lack);
/// - effective config: one file `collector.yaml`, `text/yaml`, 2048 filler bytes;
/// - remote config status: APPLIED with hash bytes 0..32;
/// - 5 package statuses `pkg-N` (N 0..=4): version `1.0.N`, hashes `[N; 32]`,
///   Installed; `server_provided_all_packages_hash` = `[9; 32]`;
/// - available components: `receivers` → {`otlp`, `prometheus`, `filelog`},
///   `exporters` → {`otlp`, `debug`}, each sub-component with metadata
///   `code.namespace` = `go.opentelemetry.io/<kind>/<name>`; hash `[7; 32]`.
pub fn full_status() -> AgentToServer {
    let identifying = vec![
        KeyValue::new("service.name", "io.opentelemetry.collector"),
        KeyValue::new("service.version", "1.2.3"),
        KeyValue::new(
            "service.instance.id",
            "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f",
        ),
        KeyValue::new("service.namespace", "bench"),
    ];
    let non_identifying: Vec<KeyValue> = (0..16)
        .map(|i| KeyValue::new(format!("attr.{i:02}"), format!("value-{i:02}")))
        .collect();

    let components = (0..10u64)
        .map(|n| {
            let broken = n == 7;
            let health = ComponentHealth {
                healthy: !broken,
                start_time_unix_nano: T0 + n,
                last_error: if broken {
                    "exporter queue full".into()
                } else {
                    String::new()
                },
                status: "ok".into(),
                status_time_unix_nano: T0 + n + 1,
                component_health_map: Default::default(),
                // opamp-go's generated types predate `attributes` (7), and the
                // Go benchmark must build the same bytes.
                attributes: Vec::new(),
            };
            (format!("component-{n}"), health)
        })
        .collect();
    let health = ComponentHealth {
        healthy: true,
        start_time_unix_nano: T0,
        last_error: String::new(),
        status: "running".into(),
        status_time_unix_nano: T0 + 1,
        component_health_map: components,
        attributes: Vec::new(),
    };

    let effective = AgentConfigMap {
        config_map: [(
            "collector.yaml".to_owned(),
            AgentConfigObject {
                body: filler(2048).into(),
                content_type: "text/yaml".into(),
                ..Default::default()
            },
        )]
        .into(),
    };

    let packages = (0..5u8)
        .map(|n| {
            let name = format!("pkg-{n}");
            let status = PackageStatus {
                name: name.clone(),
                agent_has_version: format!("1.0.{n}"),
                agent_has_hash: vec![n; 32].into(),
                server_offered_version: format!("1.0.{n}"),
                server_offered_hash: vec![n; 32].into(),
                status: PackageStatusEnum::Installed as i32,
                error_message: String::new(),
                download_details: None,
            };
            (name, status)
        })
        .collect();

    let kind = |kind: &str, names: &[&str]| {
        let sub = names
            .iter()
            .map(|name| {
                let details = ComponentDetails {
                    metadata: vec![KeyValue::new(
                        "code.namespace",
                        AnyValue::string(format!("go.opentelemetry.io/{kind}/{name}")),
                    )],
                    sub_component_map: Default::default(),
                };
                ((*name).to_owned(), details)
            })
            .collect();
        (
            kind.to_owned(),
            ComponentDetails {
                metadata: Vec::new(),
                sub_component_map: sub,
            },
        )
    };

    AgentToServer {
        instance_uid: uid(),
        sequence_num: 0,
        agent_description: Some(AgentDescription {
            identifying_attributes: identifying,
            non_identifying_attributes: non_identifying,
        }),
        capabilities: capabilities().bits(),
        health: Some(health),
        effective_config: Some(EffectiveConfig {
            config_map: Some(effective),
        }),
        remote_config_status: Some(RemoteConfigStatus {
            last_remote_config_hash: (0..32u8).collect::<Vec<_>>().into(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        package_statuses: Some(PackageStatuses {
            packages,
            server_provided_all_packages_hash: vec![9u8; 32].into(),
            error_message: String::new(),
        }),
        available_components: Some(AvailableComponents {
            components: [
                kind("receivers", &["otlp", "prometheus", "filelog"]),
                kind("exporters", &["otlp", "debug"]),
            ]
            .into(),
            hash: vec![7u8; 32].into(),
        }),
        ..Default::default()
    }
}

/// A ServerToAgent with a remote config of one file `big.yaml`
/// (`text/yaml`) whose body is 1 MiB (1,048,576) of filler; config hash
/// `[3; 32]`.
pub fn big_remote_config() -> ServerToAgent {
    ServerToAgent {
        instance_uid: uid(),
        remote_config: Some(AgentRemoteConfig {
            config: Some(AgentConfigMap {
                config_map: [(
                    "big.yaml".to_owned(),
                    AgentConfigObject {
                        body: filler(1024 * 1024).into(),
                        content_type: "text/yaml".into(),
                        ..Default::default()
                    },
                )]
                .into(),
            }),
            config_hash: vec![3u8; 32].into(),
        }),
        ..Default::default()
    }
}

/// A ServerToAgent offering 10 packages `package-N` (N 0..=9): Addon,
/// version `2.0.N`, download URL `https://packages.example.com/package-N-2.0.N.tar.gz`,
/// content hash `[N; 32]`, signature `[0xA0 + N; 64]`, one header
/// `Authorization` = `Bearer token-N`, package hash `[0x10 + N; 32]`;
/// `all_packages_hash` = `[0xEE; 32]`.
pub fn packages_available() -> ServerToAgent {
    let packages = (0..10u8)
        .map(|n| {
            let name = format!("package-{n}");
            let package = PackageAvailable {
                r#type: PackageType::Addon as i32,
                version: format!("2.0.{n}"),
                file: Some(DownloadableFile {
                    download_url: format!("https://packages.example.com/{name}-2.0.{n}.tar.gz"),
                    content_hash: vec![n; 32].into(),
                    signature: vec![0xA0 + n; 64].into(),
                    headers: Some(Headers {
                        headers: vec![Header {
                            key: "Authorization".into(),
                            value: format!("Bearer token-{n}"),
                        }],
                    }),
                }),
                hash: vec![0x10 + n; 32].into(),
            };
            (name, package)
        })
        .collect();
    ServerToAgent {
        instance_uid: uid(),
        packages_available: Some(PackagesAvailable {
            packages,
            all_packages_hash: vec![0xEEu8; 32].into(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::Message;

    #[test]
    fn messages_have_the_documented_shape() {
        let full = full_status();
        let description = full.agent_description.as_ref().unwrap();
        assert_eq!(
            description.identifying_attributes.len() + description.non_identifying_attributes.len(),
            20
        );
        assert_eq!(full.health.as_ref().unwrap().component_health_map.len(), 10);
        assert_eq!(full.package_statuses.as_ref().unwrap().packages.len(), 5);
        let big = big_remote_config().encode_to_vec();
        assert!(big.len() > 1024 * 1024 && big.len() < 1024 * 1024 + 100);
        assert_eq!(
            packages_available()
                .packages_available
                .unwrap()
                .packages
                .len(),
            10
        );
        // uid (2 + 16), sequence_num (1 + 1), capabilities 0x781f (1 + 3).
        assert_eq!(heartbeat().encode_to_vec().len(), 2 + 16 + 2 + 4);
    }
}
