//! Change notifications from the registry, for UIs and automation.

use opamp_proto::InstanceUid;

use crate::vocab::{DisconnectReason, TransportKind};

bitflags::bitflags! {
    /// Which parts of an agent's status changed with one message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct StatusChanges: u32 {
        /// `capabilities`.
        const CAPABILITIES = 1 << 0;
        /// `agent_description`.
        const DESCRIPTION = 1 << 1;
        /// `health`.
        const HEALTH = 1 << 2;
        /// `effective_config`.
        const EFFECTIVE_CONFIG = 1 << 3;
        /// `remote_config_status`.
        const REMOTE_CONFIG_STATUS = 1 << 4;
        /// `package_statuses`.
        const PACKAGE_STATUSES = 1 << 5;
        /// `custom_capabilities`.
        const CUSTOM_CAPABILITIES = 1 << 6;
        /// `available_components`.
        const AVAILABLE_COMPONENTS = 1 << 7;
        /// `connection_settings_status`.
        const CONNECTION_SETTINGS_STATUS = 1 << 8;
    }
}

/// Something changed about an agent. Receive them with
/// [`Registry::subscribe`](crate::Registry::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentEvent {
    /// The agent connected (or started a plain-HTTP session) on this instance.
    Connected {
        /// The agent.
        uid: InstanceUid,
        /// Its transport.
        transport: TransportKind,
    },
    /// The agent reported a changed status.
    StatusChanged {
        /// The agent.
        uid: InstanceUid,
        /// What changed.
        changes: StatusChanges,
    },
    /// The server gave an agent a new instance uid, because it asked
    /// (UID-05) or because its uid was in use on another connection (UID-09).
    UidReassigned {
        /// The uid the agent sent.
        old: InstanceUid,
        /// The uid it was told to use.
        new: InstanceUid,
    },
    /// The agent's connection (or plain-HTTP session) on this instance ended.
    Disconnected {
        /// The agent.
        uid: InstanceUid,
        /// Why.
        reason: DisconnectReason,
    },
    /// The agent started new connections faster than the
    /// [`ReconnectGuard`](crate::ReconnectGuard) allows; this one was
    /// refused with a hint to wait `retry_after`.
    Throttled {
        /// The agent.
        uid: InstanceUid,
        /// The wait it was told.
        retry_after: std::time::Duration,
    },
    /// The agent's record was deleted with
    /// [`Registry::remove`](crate::Registry::remove).
    Removed {
        /// The agent.
        uid: InstanceUid,
    },
}

impl AgentEvent {
    /// The agent the event is about (the new uid for `UidReassigned`).
    pub fn uid(&self) -> InstanceUid {
        match self {
            Self::Connected { uid, .. }
            | Self::StatusChanged { uid, .. }
            | Self::Disconnected { uid, .. }
            | Self::Throttled { uid, .. }
            | Self::Removed { uid } => *uid,
            Self::UidReassigned { new, .. } => *new,
        }
    }
}
