//! Builders for the messages tests send and expect.

use bytes::Bytes;
use opamp_proto::{
    AgentCapabilities, AgentConfigMap, AgentConfigObject, AgentDescription, AgentRemoteConfig,
    AgentToServer, InstanceUid, ServerToAgent,
};

/// A fixed instance uid: sixteen bytes of `n`.
pub fn uid(n: u8) -> InstanceUid {
    InstanceUid::from_array([n; 16])
}

/// What the kit's agents claim they can do: status, remote config (accept
/// and report) and heartbeats.
pub const CAPS: AgentCapabilities = AgentCapabilities::REPORTS_STATUS
    .union(AgentCapabilities::ACCEPTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_REMOTE_CONFIG)
    .union(AgentCapabilities::REPORTS_HEARTBEAT);

/// A full status report: [`CAPS`] and an agent description for the
/// service `io.example.test` 1.0.
pub fn report(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        agent_description: Some(AgentDescription::for_service("io.example.test", "1.0")),
        ..heartbeat(uid, sequence_num)
    }
}

/// A heartbeat (or plain-HTTP poll): [`CAPS`] and nothing new.
pub fn heartbeat(uid: InstanceUid, sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid.to_bytes(),
        sequence_num,
        capabilities: CAPS.bits(),
        ..Default::default()
    }
}

/// An empty answer that only echoes the uid of `message`.
pub fn ack(message: &AgentToServer) -> ServerToAgent {
    ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        ..Default::default()
    }
}

/// A one-file remote configuration: `agent.yaml` (`text/yaml`) holding
/// `body`.
pub fn config_map(body: &str) -> AgentConfigMap {
    config_file("agent.yaml", "text/yaml", body)
}

/// A one-file configuration map: file `name` of `content_type` holding
/// `body`.
pub fn config_file(name: &str, content_type: &str, body: &str) -> AgentConfigMap {
    let mut config = AgentConfigMap::default();
    config.config_map.insert(
        name.into(),
        AgentConfigObject {
            body: Bytes::copy_from_slice(body.as_bytes()),
            content_type: content_type.into(),
            ..Default::default()
        },
    );
    config
}

/// `config` as a remote config offer, with its hash.
pub fn remote_config(config: AgentConfigMap) -> AgentRemoteConfig {
    AgentRemoteConfig {
        config_hash: opamp_proto::config_hash(&config),
        config: Some(config),
    }
}

/// A message that offers `config` as the remote configuration.
pub fn offer_config(config: AgentConfigMap) -> ServerToAgent {
    ServerToAgent {
        remote_config: Some(remote_config(config)),
        ..Default::default()
    }
}

/// The body of `agent.yaml` in the remote config `message` offers; fails
/// the test when there is none.
pub fn body_of(message: &ServerToAgent) -> String {
    let config = message.remote_config.as_ref().expect("a remote config");
    let file = &config.config.as_ref().expect("a config map").config_map["agent.yaml"];
    String::from_utf8(file.body.to_vec()).expect("a UTF-8 body")
}
