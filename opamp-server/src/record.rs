//! What the registry keeps about one agent, and its storage encoding.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentRemoteConfig, AgentToServer, AvailableComponents,
    ComponentHealth, ConnectionSettingsOffers, ConnectionSettingsStatus, CustomCapabilities,
    EffectiveConfig, InstanceUid, Message, PackageStatuses, PackagesAvailable, RemoteConfigStatus,
    RemoteConfigStatuses,
};

use crate::error::StoreError;
use crate::vocab::TransportKind;

/// The merged, full status of an agent: every sub-message at its latest
/// reported value. Agents omit unchanged sub-messages (status compression,
/// SEQ-02..04); the registry keeps the last value of each.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// Capabilities from the latest message (always sent, CAP-01).
    pub capabilities: AgentCapabilities,
    /// Identifying and non-identifying attributes.
    pub description: Option<AgentDescription>,
    /// Health of the agent and its components.
    pub health: Option<ComponentHealth>,
    /// The configuration the agent runs with.
    pub effective_config: Option<EffectiveConfig>,
    /// Status of the last remote config the agent received.
    pub remote_config_status: Option<RemoteConfigStatus>,
    /// Status of every package the agent has or processes.
    pub package_statuses: Option<PackageStatuses>,
    /// Custom capabilities the agent supports.
    pub custom_capabilities: Option<CustomCapabilities>,
    /// Components the agent can run (hash, and the list once requested).
    pub available_components: Option<AvailableComponents>,
    /// Status of the last connection settings offer.
    pub connection_settings_status: Option<ConnectionSettingsStatus>,
}

/// What the server wants an agent to have. The registry offers each part
/// until the agent reports the same hash (RCFG-07/08, PKG-14, CS-10/11).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct DesiredState {
    /// The remote configuration, with its hash.
    pub remote_config: Option<AgentRemoteConfig>,
    /// The packages, with `all_packages_hash`.
    pub packages: Option<PackagesAvailable>,
    /// Connection settings, with their hash.
    pub connection_settings: Option<ConnectionSettingsOffers>,
}

/// Where an agent is connected, as last recorded by the instance holding
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionSummary {
    /// WebSocket or plain HTTP.
    pub transport: TransportKind,
    /// The peer address, if known.
    pub peer: Option<SocketAddr>,
    /// When the connection (or plain-HTTP session) started.
    pub since: SystemTime,
}

/// Everything the registry stores about one agent. [`AgentStore`]
/// implementations persist it, ideally with [`encode`](Self::encode) and
/// [`decode`](Self::decode).
///
/// [`AgentStore`]: crate::AgentStore
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AgentRecord {
    /// The agent's instance uid, the record's key.
    pub uid: InstanceUid,
    /// The merged full status.
    pub status: AgentStatus,
    /// What the server wants the agent to have.
    pub desired: DesiredState,
    /// Where the agent is connected; `None` when it is not.
    pub connection: Option<ConnectionSummary>,
    /// When the agent was first seen.
    pub first_seen: SystemTime,
    /// When the last message from the agent arrived.
    pub last_seen: SystemTime,
    /// `sequence_num` of the last message (SEQ-05).
    pub(crate) last_sequence_num: Option<u64>,
    /// A `ReportFullState` was sent and the next message is the new baseline.
    pub(crate) awaiting_full_state: bool,
    /// The `available_components` hash the server asked the full list for.
    pub(crate) requested_components_hash: Option<Bytes>,
    /// Hash of the connection settings delivered to an agent that cannot
    /// report their status (no `ReportsConnectionSettingsStatus`). Such an
    /// agent applies an offer by reconnecting and never echoes the hash, so
    /// the offer counts as complete once delivered and is not sent again on
    /// the reconnect it causes.
    pub(crate) connection_settings_delivered: Option<Bytes>,
}

/// Where a remote configuration stands for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteConfigState {
    /// Offered; the agent has not reported anything for this hash yet.
    Pending,
    /// The agent is applying it.
    Applying,
    /// The agent applied it.
    Applied,
    /// The agent failed to apply it.
    Failed {
        /// The agent's error message.
        message: String,
    },
}

impl AgentRecord {
    /// An empty record for a newly seen agent.
    pub fn new(uid: InstanceUid, now: SystemTime) -> Self {
        Self {
            uid,
            status: AgentStatus::default(),
            desired: DesiredState::default(),
            connection: None,
            first_seen: now,
            last_seen: now,
            last_sequence_num: None,
            awaiting_full_state: false,
            requested_components_hash: None,
            connection_settings_delivered: None,
        }
    }

    /// Notes that connection settings with `hash` went out to the agent:
    /// for an agent that cannot report their status, that completes the
    /// offer (see [`connection_settings_hash_in_effect`](Self::connection_settings_hash_in_effect)).
    pub(crate) fn note_connection_settings_sent(&mut self, hash: &Bytes) {
        if !self
            .status
            .capabilities
            .contains(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS)
        {
            self.connection_settings_delivered = Some(hash.clone());
        }
    }

    /// The hash of the connection settings the agent is known to have: the
    /// one it reports in `connection_settings_status` (CS-10), or, for an
    /// agent that cannot report it, the one delivered to it.
    pub fn connection_settings_hash_in_effect(&self) -> Option<&Bytes> {
        if self
            .status
            .capabilities
            .contains(AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS)
        {
            self.status
                .connection_settings_status
                .as_ref()
                .map(|status| &status.last_connection_settings_hash)
        } else {
            self.connection_settings_delivered.as_ref()
        }
    }

    /// Where the desired remote config stands, judged by the hash the agent
    /// echoes in `remote_config_status` (RCFG-06/07). `None` when no remote
    /// config is desired.
    pub fn remote_config_state(&self) -> Option<RemoteConfigState> {
        let desired = self.desired.remote_config.as_ref()?;
        let Some(status) = &self.status.remote_config_status else {
            return Some(RemoteConfigState::Pending);
        };
        if status.last_remote_config_hash != desired.config_hash {
            return Some(RemoteConfigState::Pending);
        }
        Some(match status.status() {
            RemoteConfigStatuses::Applied => RemoteConfigState::Applied,
            RemoteConfigStatuses::Applying => RemoteConfigState::Applying,
            RemoteConfigStatuses::Failed => RemoteConfigState::Failed {
                message: status.error_message.clone(),
            },
            RemoteConfigStatuses::Unset => RemoteConfigState::Pending,
        })
    }

    /// True while the agent has a connection on some instance.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Encodes the record for storage (protobuf; stable across versions of
    /// this crate, new fields are added compatibly).
    pub fn encode(&self) -> Vec<u8> {
        let status = &self.status;
        let stored = StoredRecord {
            uid: self.uid.to_bytes(),
            status: Some(AgentToServer {
                capabilities: status.capabilities.bits(),
                agent_description: status.description.clone(),
                health: status.health.clone(),
                effective_config: status.effective_config.clone(),
                remote_config_status: status.remote_config_status.clone(),
                package_statuses: status.package_statuses.clone(),
                custom_capabilities: status.custom_capabilities.clone(),
                available_components: status.available_components.clone(),
                connection_settings_status: status.connection_settings_status.clone(),
                ..Default::default()
            }),
            last_sequence_num: self.last_sequence_num,
            awaiting_full_state: self.awaiting_full_state,
            remote_config: self.desired.remote_config.clone(),
            packages: self.desired.packages.clone(),
            connection_settings: self.desired.connection_settings.clone(),
            first_seen_unix_nanos: unix_nanos(self.first_seen),
            last_seen_unix_nanos: unix_nanos(self.last_seen),
            connection: self.connection.as_ref().map(|summary| StoredConnection {
                transport: match summary.transport {
                    TransportKind::WebSocket => 1,
                    TransportKind::PlainHttp => 2,
                },
                peer: summary
                    .peer
                    .map(|addr| addr.to_string())
                    .unwrap_or_default(),
                since_unix_nanos: unix_nanos(summary.since),
            }),
            requested_components_hash: self.requested_components_hash.clone(),
            connection_settings_delivered: self.connection_settings_delivered.clone(),
        };
        stored.encode_to_vec()
    }

    /// Decodes a record written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let stored =
            StoredRecord::decode(bytes).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let uid = InstanceUid::try_from(&stored.uid)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let message = stored.status.unwrap_or_default();
        Ok(Self {
            uid,
            status: AgentStatus {
                capabilities: AgentCapabilities::from_bits_retain(message.capabilities),
                description: message.agent_description,
                health: message.health,
                effective_config: message.effective_config,
                remote_config_status: message.remote_config_status,
                package_statuses: message.package_statuses,
                custom_capabilities: message.custom_capabilities,
                available_components: message.available_components,
                connection_settings_status: message.connection_settings_status,
            },
            desired: DesiredState {
                remote_config: stored.remote_config,
                packages: stored.packages,
                connection_settings: stored.connection_settings,
            },
            connection: stored.connection.map(|summary| ConnectionSummary {
                transport: if summary.transport == 2 {
                    TransportKind::PlainHttp
                } else {
                    TransportKind::WebSocket
                },
                peer: summary.peer.parse().ok(),
                since: from_unix_nanos(summary.since_unix_nanos),
            }),
            first_seen: from_unix_nanos(stored.first_seen_unix_nanos),
            last_seen: from_unix_nanos(stored.last_seen_unix_nanos),
            last_sequence_num: stored.last_sequence_num,
            awaiting_full_state: stored.awaiting_full_state,
            requested_components_hash: stored.requested_components_hash,
            connection_settings_delivered: stored.connection_settings_delivered,
        })
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// The storage layout. The status reuses `AgentToServer`, whose fields are
/// exactly the status sub-messages.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredRecord {
    #[prost(bytes = "bytes", tag = "1")]
    uid: Bytes,
    #[prost(message, optional, tag = "2")]
    status: Option<AgentToServer>,
    #[prost(uint64, optional, tag = "3")]
    last_sequence_num: Option<u64>,
    #[prost(bool, tag = "4")]
    awaiting_full_state: bool,
    #[prost(message, optional, tag = "5")]
    remote_config: Option<AgentRemoteConfig>,
    #[prost(message, optional, tag = "6")]
    packages: Option<PackagesAvailable>,
    #[prost(message, optional, tag = "7")]
    connection_settings: Option<ConnectionSettingsOffers>,
    #[prost(uint64, tag = "8")]
    first_seen_unix_nanos: u64,
    #[prost(uint64, tag = "9")]
    last_seen_unix_nanos: u64,
    #[prost(message, optional, tag = "10")]
    connection: Option<StoredConnection>,
    #[prost(bytes = "bytes", optional, tag = "11")]
    requested_components_hash: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "12")]
    connection_settings_delivered: Option<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredConnection {
    #[prost(int32, tag = "1")]
    transport: i32,
    #[prost(string, tag = "2")]
    peer: String,
    #[prost(uint64, tag = "3")]
    since_unix_nanos: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{AgentConfigMap, AgentConfigObject, KeyValue};

    #[test]
    fn record_round_trips_through_its_storage_encoding() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut record = AgentRecord::new(InstanceUid::from_array([9; 16]), now);
        record.status.capabilities =
            AgentCapabilities::REPORTS_STATUS | AgentCapabilities::from_bits_retain(1 << 40);
        record.status.description = Some(AgentDescription {
            identifying_attributes: vec![KeyValue::new("service.name", "x")],
            ..Default::default()
        });
        record.desired.remote_config = Some(AgentRemoteConfig {
            config: Some(AgentConfigMap::default()),
            config_hash: vec![1, 2].into(),
        });
        record.connection = Some(ConnectionSummary {
            transport: TransportKind::PlainHttp,
            peer: Some("127.0.0.1:4320".parse().unwrap()),
            since: now,
        });
        record.last_sequence_num = Some(0);
        record.awaiting_full_state = true;
        record.requested_components_hash = Some(vec![3].into());
        record.connection_settings_delivered = Some(vec![4].into());
        let decoded = AgentRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);

        assert!(matches!(
            AgentRecord::decode(&[0xff, 0xff]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn config_roles_and_the_empty_key_survive_the_storage_encoding() {
        // spec v0.20.0: entries carry a role, and "" may sit beside other keys.
        let object = |body: &'static str, role: &str| AgentConfigObject {
            body: body.into(),
            content_type: "text/yaml".into(),
            role: role.into(),
        };
        let config = AgentConfigMap {
            config_map: [
                (String::new(), object("a: 1\n", "expanded")),
                ("collector.yaml".to_owned(), object("a: ${A}\n", "")),
                ("rules.yaml".to_owned(), object("r: 1\n", "rules")),
            ]
            .into(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut record = AgentRecord::new(InstanceUid::from_array([4; 16]), now);
        record.status.effective_config = Some(EffectiveConfig {
            config_map: Some(config.clone()),
        });
        record.desired.remote_config = Some(AgentRemoteConfig {
            config_hash: opamp_proto::config_hash(&config),
            config: Some(config.clone()),
        });
        let decoded = AgentRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        let stored = decoded.desired.remote_config.unwrap().config.unwrap();
        assert_eq!(stored.config_map[""].role, "expanded");
        assert_eq!(stored.config_map["rules.yaml"].role, "rules");
    }

    #[test]
    fn rcfg_07_state_follows_the_echoed_hash() {
        let mut record = AgentRecord::new(InstanceUid::from_array([1; 16]), SystemTime::now());
        assert_eq!(record.remote_config_state(), None);
        record.desired.remote_config = Some(AgentRemoteConfig {
            config: None,
            config_hash: vec![1].into(),
        });
        assert_eq!(
            record.remote_config_state(),
            Some(RemoteConfigState::Pending)
        );
        record.status.remote_config_status = Some(RemoteConfigStatus {
            last_remote_config_hash: vec![0].into(),
            status: RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        });
        assert_eq!(
            record.remote_config_state(),
            Some(RemoteConfigState::Pending),
            "old hash"
        );
        record.status.remote_config_status = Some(RemoteConfigStatus {
            last_remote_config_hash: vec![1].into(),
            status: RemoteConfigStatuses::Failed as i32,
            error_message: "bad yaml".into(),
        });
        assert_eq!(
            record.remote_config_state(),
            Some(RemoteConfigState::Failed {
                message: "bad yaml".into()
            })
        );
    }
}
