//! `--demo`: a few simulated agents inside the server process, built on
//! opamp-client, so the page has something to show right away.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use opamp_client::proto::{
    AgentConfigMap, CustomCapabilities, CustomMessage, EffectiveConfig, RemoteConfigStatus,
    RemoteConfigStatuses, ServerToAgentCommand, semconv,
};
use opamp_client::{
    AgentCapabilities, AgentDescription, Callbacks, ClientTlsConfig, ComponentHealth, InstanceUid,
    MemoryPackageStore, MessageData, OpampClient,
};

use super::certs::ClientCa;
use super::lock;

/// The custom capability demo agents answer: they echo every message back.
pub(crate) const ECHO_CAPABILITY: &str = "io.opamp-rs.echo";

const SERVICES: [&str; 3] = ["checkout", "cart", "frontend"];

/// The running demo agents.
pub(crate) struct DemoAgents {
    clients: Vec<OpampClient>,
}

impl DemoAgents {
    /// Stops every agent (each says goodbye with `agent_disconnect`).
    pub(crate) async fn stop(self) {
        for client in &self.clients {
            client.stop().await;
        }
    }
}

/// How demo agents reach a TLS endpoint: the roots to trust and the CA that
/// issues their client certificates (for mutual TLS).
#[derive(Clone, Default)]
pub(crate) struct DemoTls {
    pub(crate) root_pem: Option<Vec<u8>>,
    pub(crate) client_ca: Option<ClientCa>,
}

/// Starts `count` demo agents talking to `endpoint`.
pub(crate) async fn start(
    endpoint: String,
    count: usize,
    token: Option<String>,
    tls: DemoTls,
) -> Result<DemoAgents, Box<dyn std::error::Error + Send + Sync>> {
    let mut clients = Vec::with_capacity(count);
    for index in 0..count {
        let uid = demo_uid(index);
        let service = SERVICES[index % SERVICES.len()];
        let description = AgentDescription::for_service(service, "1.4.2")
            .with_identifying(semconv::SERVICE_INSTANCE_ID, format!("demo-{index}"))
            .with_non_identifying(semconv::HOST_NAME, format!("demo-host-{}", index % 2))
            .with_non_identifying(semconv::OS_TYPE, std::env::consts::OS)
            .with_non_identifying(
                semconv::DEPLOYMENT_ENVIRONMENT_NAME,
                if index % 2 == 0 {
                    "production"
                } else {
                    "staging"
                },
            );
        let agent = DemoAgent {
            config: Mutex::new(starting_config(service)),
        };
        let effective = agent.effective();
        let mut builder = OpampClient::builder(endpoint.clone())
            .instance_uid(uid)
            .agent_description(description)
            .capabilities(
                AgentCapabilities::ACCEPTS_REMOTE_CONFIG
                    | AgentCapabilities::REPORTS_REMOTE_CONFIG
                    | AgentCapabilities::REPORTS_EFFECTIVE_CONFIG
                    | AgentCapabilities::REPORTS_HEALTH
                    | AgentCapabilities::REPORTS_HEARTBEAT
                    | AgentCapabilities::ACCEPTS_RESTART_COMMAND
                    | AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
                    | AgentCapabilities::ACCEPTS_PACKAGES
                    | AgentCapabilities::REPORTS_PACKAGE_STATUSES,
            )
            .package_store(Arc::new(MemoryPackageStore::new()))
            .callbacks(agent);
        if let Some(token) = &token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        if let Some(root) = &tls.root_pem {
            let mut config = ClientTlsConfig::new().with_root_ca_pem(root.clone());
            if let Some(ca) = &tls.client_ca {
                let issued = ca.issue(uid)?;
                config = config.with_client_identity_pem(issued.cert_pem, issued.key_pem);
            }
            builder = builder.tls(config);
        }
        let client = builder.build()?;
        client.set_health(health(true, "running"));
        client.set_effective_config(effective);
        client.set_custom_capabilities(CustomCapabilities {
            capabilities: vec![ECHO_CAPABILITY.to_owned()],
        });
        client.start().await?;
        clients.push(client);
    }
    tracing::info!(count, "demo agents started");
    Ok(DemoAgents { clients })
}

/// A fixed uid per demo slot, so restarting the server with `--demo` finds
/// the same agents instead of adding new ones.
fn demo_uid(index: usize) -> InstanceUid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("opamp-rs demo agent {index}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // RFC 9562 version 8 (custom) with the RFC variant bits.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    InstanceUid::from_array(bytes)
}

struct DemoAgent {
    config: Mutex<AgentConfigMap>,
}

impl DemoAgent {
    fn effective(&self) -> EffectiveConfig {
        EffectiveConfig {
            config_map: Some(lock(&self.config).clone()),
        }
    }
}

fn starting_config(service: &str) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        "collector.yaml".into(),
        opamp_client::proto::AgentConfigObject {
            body: format!(
                "receivers:\n  otlp: {{}}\nexporters:\n  debug: {{}}\n# service {service}\n"
            )
            .into(),
            content_type: "text/yaml".into(),
            ..Default::default()
        },
    );
    config
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn health(healthy: bool, status: &str) -> ComponentHealth {
    let now = now_nanos();
    let component = |name: &str| {
        (
            name.to_owned(),
            ComponentHealth {
                healthy,
                status: status.to_owned(),
                start_time_unix_nano: now,
                status_time_unix_nano: now,
                ..Default::default()
            },
        )
    };
    ComponentHealth {
        healthy,
        status: status.to_owned(),
        start_time_unix_nano: now,
        status_time_unix_nano: now,
        component_health_map: [component("receiver/otlp"), component("exporter/debug")]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

impl Callbacks for DemoAgent {
    fn on_message(&self, client: &OpampClient, data: &MessageData) {
        if let Some(offer) = &data.remote_config {
            let config = offer.config.clone().unwrap_or_default();
            // A config that says "fail" is rejected, to show FAILED on the page.
            let rejected = config
                .config_map
                .values()
                .any(|file| file.body.windows(4).any(|window| window == b"fail"));
            let (status, error_message) = if rejected {
                (
                    RemoteConfigStatuses::Failed,
                    "the config asks to fail".to_owned(),
                )
            } else {
                *lock(&self.config) = config;
                client.set_effective_config(self.effective());
                (RemoteConfigStatuses::Applied, String::new())
            };
            client.set_remote_config_status(RemoteConfigStatus {
                last_remote_config_hash: offer.config_hash.clone(),
                status: status as i32,
                error_message,
            });
        }
        if let Some(message) = &data.custom_message {
            let reply = CustomMessage {
                capability: message.capability.clone(),
                r#type: format!("{}-reply", message.r#type),
                data: message.data.clone(),
            };
            if let Err(error) = client.send_custom_message(reply) {
                tracing::debug!(%error, "demo agent could not echo a custom message");
            }
        }
    }

    fn on_command(&self, command: &ServerToAgentCommand) {
        tracing::info!(?command, "demo agent asked to restart (simulated)");
    }

    fn effective_config(&self) -> Option<EffectiveConfig> {
        Some(self.effective())
    }
}
