//! Delivery to agents connected to another server instance.

use std::sync::Weak;

use opamp_proto::{InstanceUid, ServerToAgent};

use crate::connection::{Delivery, TransportKind};
use crate::error::{BusError, SendError};
use crate::store::BoxFuture;

/// Carries messages to agents whose connection lives on another server
/// instance.
///
/// The registry delivers to agents connected to its own instance directly.
/// For any other agent it calls [`forward`](Self::forward); the bus carries
/// the message to the instance holding the connection, whose bus hands it to
/// [`BusInbox::deliver`]. [`LocalBus`], the default, has no other instances.
///
/// Offers that the registry keeps as desired state (remote config, packages,
/// connection settings) also reach the agent without the bus, through the
/// shared [`AgentStore`](crate::AgentStore), but only when the instance
/// holding the connection next reads the record: on the agent's next
/// status-changing message or reconnect (bare heartbeats skip the store). The
/// bus makes them immediate.
pub trait MessageBus: Send + Sync + 'static {
    /// Carries `message` to the instance holding `uid`'s connection.
    /// [`BusError::NoRoute`] means no instance holds one.
    fn forward(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> BoxFuture<'_, Result<(), BusError>>;

    /// Called once when a registry is built with this bus: keep `inbox` and
    /// hand it the messages other instances forward here.
    fn attach(&self, inbox: BusInbox) {
        let _ = inbox;
    }

    /// A connection (or plain-HTTP session) for `uid` starts on this
    /// instance: from now on [`forward`](Self::forward) on any instance
    /// should reach this one. The registry calls it before it saves the
    /// agent's first record of the connection, so a store that fences
    /// writers by ownership can rely on it.
    fn agent_connected(&self, uid: InstanceUid, transport: TransportKind) -> BoxFuture<'_, ()> {
        let _ = (uid, transport);
        Box::pin(std::future::ready(()))
    }

    /// The connection (or session) for `uid` on this instance ended, after
    /// its last save.
    fn agent_disconnected(&self, uid: InstanceUid) -> BoxFuture<'_, ()> {
        let _ = uid;
        Box::pin(std::future::ready(()))
    }

    /// Messages other instances left for a plain-HTTP agent polling here,
    /// oldest first; the registry merges them into the reply to its poll.
    /// Called at every poll, so make the common case (nothing waiting)
    /// cheap.
    fn take_pending(&self, uid: InstanceUid) -> BoxFuture<'_, Vec<ServerToAgent>> {
        let _ = uid;
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// Hands a forwarded message to an agent connected to this instance; the
/// registry implements it.
pub(crate) trait LocalDelivery: Send + Sync {
    /// `None` when the agent is not connected here.
    fn deliver_locally(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> Option<Result<Delivery, SendError>>;
}

/// The receiving end of a [`MessageBus`] on one instance.
#[derive(Clone)]
pub struct BusInbox {
    pub(crate) registry: Weak<dyn LocalDelivery>,
}

impl std::fmt::Debug for BusInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusInbox")
            .field("attached", &(self.registry.strong_count() > 0))
            .finish()
    }
}

impl BusInbox {
    /// Delivers a forwarded message to an agent connected to this instance.
    /// Never forwards again: an agent not connected here gives
    /// [`SendError::NotConnected`].
    pub async fn deliver(
        &self,
        uid: InstanceUid,
        message: ServerToAgent,
    ) -> Result<Delivery, SendError> {
        let registry = self.registry.upgrade().ok_or(SendError::Closed)?;
        registry
            .deliver_locally(uid, message)
            .ok_or(SendError::NotConnected(uid))?
    }
}

/// The default bus: a single instance, nothing to forward to.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalBus;

impl MessageBus for LocalBus {
    fn forward(
        &self,
        uid: InstanceUid,
        _message: ServerToAgent,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { Err(BusError::NoRoute(uid)) })
    }
}
