//! Messages the unit tests of the core and of the registry both send.

use opamp_proto::{
    AgentCapabilities, AgentDescription, AgentToServer, ComponentHealth, InstanceUid,
};

/// What the test agents announce: status, remote config and health.
pub(crate) const CAPS: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEALTH);

pub(crate) fn uid(n: u8) -> InstanceUid {
    InstanceUid::from_array([n; 16])
}

pub(crate) fn description() -> AgentDescription {
    AgentDescription::for_service("io.example.agent", "1.0")
}

/// A full first report: description and health.
pub(crate) fn full(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        agent_description: Some(description()),
        health: Some(ComponentHealth {
            healthy: true,
            ..Default::default()
        }),
        ..compressed(uid, sequence_num)
    }
}

/// A compressed report: nothing changed.
pub(crate) fn compressed(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        ..Default::default()
    }
}

/// `message` announcing `capabilities` instead.
pub(crate) fn with_caps(
    mut message: AgentToServer,
    capabilities: AgentCapabilities,
) -> AgentToServer {
    message.capabilities = capabilities.bits();
    message
}
