//! Public error types.

use std::error::Error as StdError;

use opamp_proto::{AgentCapabilities, InstanceUid};

/// An [`AgentStore`](crate::AgentStore) operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage backend failed (I/O, database, network).
    #[error("agent store backend failed: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
    /// A stored record could not be decoded.
    #[error("stored agent record is corrupt: {0}")]
    Corrupt(String),
    /// The save was refused because another server instance has claimed the
    /// agent's connection since this one did (a store that fences writers
    /// by ownership, see [`MessageBus::agent_connected`](crate::MessageBus::agent_connected)).
    /// A plain-HTTP agent whose polls reach several instances is claimed
    /// again and the save retried once; a WebSocket under the older claim is
    /// closed ([`DisconnectReason::Replaced`](crate::DisconnectReason::Replaced)):
    /// the newer claim wins. A late save of a closed connection is dropped.
    #[error("this instance no longer owns the agent: {0}")]
    NotOwner(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Backend(error.into())
    }
}

/// A [`MessageBus`](crate::MessageBus) could not forward a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No instance holds a connection for the agent.
    #[error("no server instance holds a connection to agent {0}")]
    NoRoute(InstanceUid),
    /// The bus itself failed.
    #[error("message bus failed: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

/// A message could not be sent or an offer could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The encoded message is larger than the configured limit, so it was
    /// not sent (WS-11, HTTP-19).
    #[error("ServerToAgent of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Encoded size (WebSocket: header + data).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The WebSocket agent does not read what it is sent; its bounded send
    /// queue was full and the connection has been closed.
    #[error("agent is not reading: send queue full, connection closed")]
    QueueFull,
    /// The agent has not announced the capability this offer needs (CAP-09,
    /// RCFG-02, PKG-01, CS-01, CMD-01).
    #[error("agent {uid} does not accept this offer: capability {capability:?} not announced")]
    NotAccepted {
        /// The agent.
        uid: InstanceUid,
        /// The missing capability.
        capability: AgentCapabilities,
    },
    /// A custom message for a custom capability the agent has not announced
    /// (CUS-04).
    #[error("agent {uid} has not announced custom capability {capability:?}")]
    CustomCapabilityNotAnnounced {
        /// The agent.
        uid: InstanceUid,
        /// The capability named by the message.
        capability: String,
    },
    /// The registry has never heard of this agent.
    #[error("unknown agent {0}")]
    UnknownAgent(InstanceUid),
    /// The agent is known but not connected to any instance.
    #[error("agent {0} is not connected")]
    NotConnected(InstanceUid),
    /// The agent store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message bus failed.
    #[error(transparent)]
    Bus(BusError),
}

/// Building or running the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS configuration is invalid.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] opamp_transport::TlsError),
    /// Accepting connections failed.
    #[error("listener failed: {0}")]
    Io(#[from] std::io::Error),
}
