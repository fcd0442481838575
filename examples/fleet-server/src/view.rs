//! The JSON shapes of the API, built from registry records.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_proto::{
    AgentCapabilities, AgentCapabilityBit, AgentConfigMap, AgentDescription, ComponentHealth,
    KeyValue, PackageStatusEnum, PackageStatuses, PackageType, RemoteConfigStatuses, config_hash,
};
use opamp_server::{AgentRecord, RemoteConfigState, TransportKind};
use serde::Serialize;

use super::store::{AgentEvent, ConfigSource, HistoryEntry, from_unix_ms};

/// One agent as listed by `GET /api/agents`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentSummary {
    pub(crate) instance_uid: String,
    pub(crate) connected: bool,
    pub(crate) transport: Option<&'static str>,
    pub(crate) description: DescriptionView,
    pub(crate) capabilities: Vec<String>,
    pub(crate) health: Option<HealthView>,
    pub(crate) effective_config: Option<ConfigView>,
    pub(crate) remote_config_status: Option<RemoteConfigStatusView>,
    pub(crate) package_statuses: Option<PackageStatusesView>,
    pub(crate) sequence_num: Option<u64>,
    pub(crate) first_seen: String,
    pub(crate) last_seen: String,
    /// The config this server wants the agent to run and where it stands.
    pub(crate) desired_config: Option<DesiredConfigView>,
    pub(crate) heartbeat_interval_seconds: Option<u64>,
}

/// `GET /api/agents/{uid}`: the summary plus bodies, history and events.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentDetail {
    #[serde(flatten)]
    pub(crate) summary: AgentSummary,
    pub(crate) custom_capabilities: Vec<String>,
    pub(crate) packages_offered: BTreeMap<String, PackageOfferView>,
    pub(crate) available_components: Option<BTreeMap<String, serde_json::Value>>,
    pub(crate) config_history: Vec<HistoryView>,
    pub(crate) events: Vec<EventView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DescriptionView {
    pub(crate) identifying: BTreeMap<String, String>,
    pub(crate) non_identifying: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthView {
    pub(crate) healthy: bool,
    pub(crate) status: String,
    pub(crate) last_error: String,
    pub(crate) start_time: Option<String>,
    pub(crate) status_time: Option<String>,
    pub(crate) components: BTreeMap<String, HealthView>,
}

/// A config map: its hash, file names and (in details) bodies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConfigView {
    pub(crate) hash: String,
    pub(crate) files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bodies: Option<BTreeMap<String, FileView>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileView {
    pub(crate) content_type: String,
    /// What the object is for the agent (spec v0.20.0); empty when unset.
    pub(crate) role: String,
    /// The body as text, or base64 when it is not UTF-8.
    pub(crate) body: String,
    pub(crate) encoding: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RemoteConfigStatusView {
    pub(crate) status: &'static str,
    pub(crate) config_hash: String,
    pub(crate) error_message: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DesiredConfigView {
    pub(crate) config_hash: String,
    pub(crate) source: Option<ConfigSource>,
    /// `PENDING`, `APPLYING`, `APPLIED` or `FAILED`.
    pub(crate) state: &'static str,
    pub(crate) error_message: String,
    pub(crate) files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bodies: Option<BTreeMap<String, FileView>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PackageStatusesView {
    pub(crate) server_provided_all_packages_hash: String,
    pub(crate) error_message: String,
    pub(crate) packages: BTreeMap<String, PackageStatusView>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PackageStatusView {
    pub(crate) status: &'static str,
    pub(crate) agent_has_version: String,
    pub(crate) agent_has_hash: String,
    pub(crate) server_offered_version: String,
    pub(crate) server_offered_hash: String,
    pub(crate) error_message: String,
    pub(crate) download_percent: Option<f64>,
    pub(crate) download_bytes_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PackageOfferView {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) version: String,
    pub(crate) download_url: String,
    pub(crate) sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistoryView {
    pub(crate) config_hash: String,
    pub(crate) source: ConfigSource,
    pub(crate) files: Vec<String>,
    pub(crate) offered_at: String,
    pub(crate) outcome: String,
    pub(crate) error_message: String,
    pub(crate) updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventView {
    pub(crate) at: String,
    pub(crate) kind: String,
    pub(crate) message: String,
    /// How many more times it happened (0: once).
    pub(crate) repeats: u32,
}

/// What the summary needs beyond the record.
pub(crate) struct LiveFacts {
    /// The transport of the agent's live connection to this server, if any.
    pub(crate) transport: Option<TransportKind>,
    pub(crate) sequence_num: Option<u64>,
    pub(crate) source: Option<ConfigSource>,
}

pub(crate) fn summary(record: &AgentRecord, live: &LiveFacts, with_bodies: bool) -> AgentSummary {
    let status = &record.status;
    let desired_config = record.desired.remote_config.as_ref().map(|offer| {
        let (state, error_message) = match record.remote_config_state() {
            Some(RemoteConfigState::Applied) => ("APPLIED", String::new()),
            Some(RemoteConfigState::Applying) => ("APPLYING", String::new()),
            Some(RemoteConfigState::Failed { message }) => ("FAILED", message),
            _ => ("PENDING", String::new()),
        };
        let config = offer.config.clone().unwrap_or_default();
        DesiredConfigView {
            config_hash: hex::encode(&offer.config_hash),
            source: live.source.clone(),
            state,
            error_message,
            files: config.config_map.keys().cloned().collect(),
            bodies: with_bodies.then(|| file_views(&config)),
        }
    });
    let heartbeat_interval_seconds = record
        .desired
        .connection_settings
        .as_ref()
        .and_then(|settings| settings.opamp.as_ref())
        .map(|opamp| opamp.heartbeat_interval_seconds);
    AgentSummary {
        instance_uid: record.uid.to_string(),
        connected: live.transport.is_some(),
        transport: live.transport.map(transport_name),
        description: status
            .description
            .as_ref()
            .map(description_view)
            .unwrap_or_default(),
        capabilities: capability_names(status.capabilities),
        health: status.health.as_ref().map(health_view),
        effective_config: status.effective_config.as_ref().map(|effective| {
            config_view(
                &effective.config_map.clone().unwrap_or_default(),
                with_bodies,
            )
        }),
        remote_config_status: status.remote_config_status.as_ref().map(|reported| {
            RemoteConfigStatusView {
                status: remote_config_status_name(reported.status()),
                config_hash: hex::encode(&reported.last_remote_config_hash),
                error_message: reported.error_message.clone(),
            }
        }),
        package_statuses: status.package_statuses.as_ref().map(package_statuses_view),
        sequence_num: live.sequence_num,
        first_seen: rfc3339(record.first_seen),
        last_seen: rfc3339(record.last_seen),
        desired_config,
        heartbeat_interval_seconds,
    }
}

pub(crate) fn detail(
    record: &AgentRecord,
    live: &LiveFacts,
    history: Vec<HistoryEntry>,
    events: Vec<AgentEvent>,
) -> AgentDetail {
    let status = &record.status;
    let packages_offered = record
        .desired
        .packages
        .as_ref()
        .map(|offer| {
            offer
                .packages
                .iter()
                .map(|(name, package)| {
                    let file = package.file.clone().unwrap_or_default();
                    let view = PackageOfferView {
                        kind: match package.r#type() {
                            PackageType::TopLevel => "top_level",
                            PackageType::Addon => "addon",
                        },
                        version: package.version.clone(),
                        download_url: file.download_url,
                        sha256: hex::encode(&file.content_hash),
                    };
                    (name.clone(), view)
                })
                .collect()
        })
        .unwrap_or_default();
    let available_components = status.available_components.as_ref().map(|available| {
        available
            .components
            .iter()
            .map(|(name, details)| (name.clone(), component_json(details)))
            .collect()
    });
    AgentDetail {
        summary: summary(record, live, true),
        custom_capabilities: status
            .custom_capabilities
            .as_ref()
            .map(|custom| custom.capabilities.clone())
            .unwrap_or_default(),
        packages_offered,
        available_components,
        config_history: history
            .into_iter()
            .map(|entry| HistoryView {
                config_hash: entry.config_hash,
                source: entry.source,
                files: entry.files,
                offered_at: rfc3339(from_unix_ms(entry.offered_at_ms)),
                outcome: entry.outcome,
                error_message: entry.error_message,
                updated_at: rfc3339(from_unix_ms(entry.updated_at_ms)),
            })
            .collect(),
        events: events
            .into_iter()
            .map(|event| EventView {
                at: rfc3339(from_unix_ms(event.at_ms)),
                kind: event.kind,
                message: event.message,
                repeats: event.repeats,
            })
            .collect(),
    }
}

pub(crate) fn transport_name(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::PlainHttp => "http",
        _ => "websocket",
    }
}

/// RFC 3339 UTC with millisecond precision.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn rfc3339_nanos(unix_nanos: u64) -> Option<String> {
    (unix_nanos != 0).then(|| rfc3339(UNIX_EPOCH + Duration::from_nanos(unix_nanos)))
}

/// Spec names of the capability bits (`ReportsStatus`, ...); unknown bits as hex.
pub(crate) fn capability_names(capabilities: AgentCapabilities) -> Vec<String> {
    (0..64)
        .map(|shift| 1u64 << shift)
        .filter(|bit| capabilities.bits() & bit != 0)
        .map(|bit| {
            i32::try_from(bit)
                .ok()
                .and_then(|value| AgentCapabilityBit::try_from(value).ok())
                .map(|named| {
                    named
                        .as_str_name()
                        .trim_start_matches("AgentCapabilities_")
                        .to_owned()
                })
                .unwrap_or_else(|| format!("{bit:#x}"))
        })
        .collect()
}

pub(crate) fn description_view(description: &AgentDescription) -> DescriptionView {
    let flatten = |attributes: &[KeyValue]| {
        attributes
            .iter()
            .map(|kv| {
                let value = kv
                    .value
                    .as_ref()
                    .map(|v| v.to_display_string())
                    .unwrap_or_default();
                (kv.key.clone(), value)
            })
            .collect()
    };
    DescriptionView {
        identifying: flatten(&description.identifying_attributes),
        non_identifying: flatten(&description.non_identifying_attributes),
    }
}

fn health_view(health: &ComponentHealth) -> HealthView {
    HealthView {
        healthy: health.healthy,
        status: health.status.clone(),
        last_error: health.last_error.clone(),
        start_time: rfc3339_nanos(health.start_time_unix_nano),
        status_time: rfc3339_nanos(health.status_time_unix_nano),
        components: health
            .component_health_map
            .iter()
            .map(|(name, component)| (name.clone(), health_view(component)))
            .collect(),
    }
}

pub(crate) fn config_view(config: &AgentConfigMap, with_bodies: bool) -> ConfigView {
    ConfigView {
        hash: hex::encode(config_hash(config)),
        files: config.config_map.keys().cloned().collect(),
        bodies: with_bodies.then(|| file_views(config)),
    }
}

pub(crate) fn file_views(config: &AgentConfigMap) -> BTreeMap<String, FileView> {
    config
        .config_map
        .iter()
        .map(|(name, file)| {
            let view = match std::str::from_utf8(&file.body) {
                Ok(text) => FileView {
                    content_type: file.content_type.clone(),
                    role: file.role.clone(),
                    body: text.to_owned(),
                    encoding: "utf-8",
                },
                Err(_) => {
                    use base64::Engine as _;
                    FileView {
                        content_type: file.content_type.clone(),
                        role: file.role.clone(),
                        body: base64::engine::general_purpose::STANDARD.encode(&file.body),
                        encoding: "base64",
                    }
                }
            };
            (name.clone(), view)
        })
        .collect()
}

pub(crate) fn remote_config_status_name(status: RemoteConfigStatuses) -> &'static str {
    match status {
        RemoteConfigStatuses::Unset => "UNSET",
        RemoteConfigStatuses::Applied => "APPLIED",
        RemoteConfigStatuses::Applying => "APPLYING",
        RemoteConfigStatuses::Failed => "FAILED",
    }
}

pub(crate) fn package_status_name(status: PackageStatusEnum) -> &'static str {
    match status {
        PackageStatusEnum::Installed => "INSTALLED",
        PackageStatusEnum::InstallPending => "INSTALL_PENDING",
        PackageStatusEnum::Installing => "INSTALLING",
        PackageStatusEnum::InstallFailed => "INSTALL_FAILED",
        PackageStatusEnum::Downloading => "DOWNLOADING",
    }
}

fn package_statuses_view(statuses: &PackageStatuses) -> PackageStatusesView {
    PackageStatusesView {
        server_provided_all_packages_hash: hex::encode(&statuses.server_provided_all_packages_hash),
        error_message: statuses.error_message.clone(),
        packages: statuses
            .packages
            .iter()
            .map(|(name, status)| {
                let view = PackageStatusView {
                    status: package_status_name(status.status()),
                    agent_has_version: status.agent_has_version.clone(),
                    agent_has_hash: hex::encode(&status.agent_has_hash),
                    server_offered_version: status.server_offered_version.clone(),
                    server_offered_hash: hex::encode(&status.server_offered_hash),
                    error_message: status.error_message.clone(),
                    download_percent: status.download_details.as_ref().map(|d| d.download_percent),
                    download_bytes_per_second: status
                        .download_details
                        .as_ref()
                        .map(|d| d.download_bytes_per_second),
                };
                (name.clone(), view)
            })
            .collect(),
    }
}

fn component_json(details: &opamp_proto::ComponentDetails) -> serde_json::Value {
    let metadata: BTreeMap<String, String> = details
        .metadata
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value
                    .as_ref()
                    .map(|v| v.to_display_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let subcomponents: BTreeMap<String, serde_json::Value> = details
        .sub_component_map
        .iter()
        .map(|(name, sub)| (name.clone(), component_json(sub)))
        .collect();
    serde_json::json!({ "metadata": metadata, "components": subcomponents })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_use_spec_spelling_and_keep_unknown_bits() {
        let caps = AgentCapabilities::REPORTS_STATUS
            | AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS
            | AgentCapabilities::from_bits_retain(1 << 40);
        assert_eq!(
            capability_names(caps),
            [
                "ReportsStatus",
                "AcceptsOpAMPConnectionSettings",
                "0x10000000000"
            ]
        );
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(time), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn binary_bodies_are_base64() {
        let mut config = AgentConfigMap::default();
        config.config_map.insert(
            "bin".into(),
            opamp_proto::AgentConfigObject {
                body: vec![0xff, 0x00].into(),
                content_type: String::new(),
                role: "certificate".into(),
            },
        );
        let files = file_views(&config);
        assert_eq!(files["bin"].encoding, "base64");
        assert_eq!(files["bin"].body, "/wA=");
        assert_eq!(files["bin"].role, "certificate");
    }
}
