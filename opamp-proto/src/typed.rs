//! Typed accessors on the generated messages.

use crate::generated::{AgentToServer, ServerToAgent};
use crate::{
    AgentCapabilities, AgentToServerFlags, InstanceUid, InstanceUidError, ServerCapabilities,
    ServerToAgentFlags,
};

impl AgentToServer {
    /// `instance_uid` as an [`InstanceUid`]; an error unless it is 16 bytes.
    pub fn uid(&self) -> Result<InstanceUid, InstanceUidError> {
        InstanceUid::try_from(&self.instance_uid)
    }

    /// `capabilities` as a typed set (unknown bits kept).
    pub fn typed_capabilities(&self) -> AgentCapabilities {
        AgentCapabilities::from_bits_retain(self.capabilities)
    }

    /// `flags` as a typed set (unknown bits kept).
    pub fn typed_flags(&self) -> AgentToServerFlags {
        AgentToServerFlags::from_bits_retain(self.flags)
    }
}

impl ServerToAgent {
    /// `instance_uid` as an [`InstanceUid`]; an error unless it is 16 bytes.
    pub fn uid(&self) -> Result<InstanceUid, InstanceUidError> {
        InstanceUid::try_from(&self.instance_uid)
    }

    /// `capabilities` as a typed set (unknown bits kept).
    pub fn typed_capabilities(&self) -> ServerCapabilities {
        ServerCapabilities::from_bits_retain(self.capabilities)
    }

    /// `flags` as a typed set (unknown bits kept).
    pub fn typed_flags(&self) -> ServerToAgentFlags {
        ServerToAgentFlags::from_bits_retain(self.flags)
    }

    /// The new instance uid offered by `agent_identification`, if present.
    /// An offer that is not 16 bytes is an error, which the agent must
    /// ignore (UID-07).
    pub fn new_instance_uid(&self) -> Option<Result<InstanceUid, InstanceUidError>> {
        self.agent_identification
            .as_ref()
            .map(|identification| InstanceUid::try_from(&identification.new_instance_uid))
    }
}
