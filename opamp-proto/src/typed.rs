//! Typed accessors on the generated messages.

use crate::generated::{AgentToServer, ServerToAgent};
use crate::{
    AgentCapabilities, AgentToServerFlags, InstanceUid, InstanceUidError, ServerCapabilities,
    ServerToAgentFlags,
};

/// The accessors both directions share: the uid and the two bit sets.
macro_rules! typed_accessors {
    ($message:ty, $capabilities:ty, $flags:ty) => {
        impl $message {
            /// `instance_uid` as an [`InstanceUid`]; an error unless it is 16 bytes.
            pub fn uid(&self) -> Result<InstanceUid, InstanceUidError> {
                InstanceUid::try_from(&self.instance_uid)
            }

            /// `capabilities` as a typed set (unknown bits kept).
            pub fn typed_capabilities(&self) -> $capabilities {
                <$capabilities>::from_bits_retain(self.capabilities)
            }

            /// `flags` as a typed set (unknown bits kept).
            pub fn typed_flags(&self) -> $flags {
                <$flags>::from_bits_retain(self.flags)
            }
        }
    };
}

typed_accessors!(AgentToServer, AgentCapabilities, AgentToServerFlags);
typed_accessors!(ServerToAgent, ServerCapabilities, ServerToAgentFlags);

impl ServerToAgent {
    /// The new instance uid offered by `agent_identification`, if present.
    /// An offer that is not 16 bytes is an error, which the agent must
    /// ignore (UID-07).
    pub fn new_instance_uid(&self) -> Option<Result<InstanceUid, InstanceUidError>> {
        self.agent_identification
            .as_ref()
            .map(|identification| InstanceUid::try_from(&identification.new_instance_uid))
    }
}
