//! Where the registry keeps agent records.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use opamp_proto::InstanceUid;

use crate::error::StoreError;
use crate::record::AgentRecord;

/// The future returned by [`AgentStore`] and [`MessageBus`](crate::MessageBus)
/// methods.
///
/// The workspace's one convention for async extension points: a trait the
/// library keeps as a trait object (`Arc<dyn AgentStore>`,
/// `Arc<dyn MessageBus>`, the client's `Arc<dyn Callbacks>` and its
/// `PackageStore`) returns this boxed future (the same type as
/// `futures_util::future::BoxFuture`), because `async fn` in traits is not
/// object-safe. The one trait taken as a generic type parameter and called
/// on every message, the server's [`Callbacks`](crate::Callbacks), uses
/// `async fn` (`impl Future + Send`), so the hot path allocates nothing.
/// Work that never waits (the client's `PackageVerifier`, which hashes
/// chunks) is synchronous. All are `Send + Sync + 'static`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Persistent storage of [`AgentRecord`]s, keyed by instance uid.
///
/// The registry loads a record, changes it and saves it back for every
/// offer and for every agent message that changes something besides the
/// per-message bookkeeping. A bare heartbeat of an agent connected to this
/// instance (instance uid, `sequence_num` and unchanged capabilities only)
/// calls neither `load` nor `save`, only [`contains`](Self::contains): its `sequence_num` and
/// [`last_seen`](AgentRecord::last_seen) are kept in memory and saved with
/// the agent's next saved change, with the next offer, and when its
/// connection ends. So a record read straight from the store may show an
/// older `last_seen` for a connected agent;
/// [`Registry::agent`](crate::Registry::agent) and
/// [`Registry::agents`](crate::Registry::agents) show the current one.
///
/// Within one server instance the registry serialises those
/// read-modify-write steps per agent; a store shared by several instances
/// must make `save` safe against concurrent writers itself (an agent's
/// messages normally reach one instance, so last-writer-wins is usually
/// enough). An instance reads an agent's record again at the agent's next
/// message that changes its status and when it reconnects, not at every
/// heartbeat, so desired state set through another instance reaches a
/// heartbeating agent through the [`MessageBus`](crate::MessageBus) (which
/// delivers such offers at once) rather than through the store.
/// [`AgentRecord::encode`] / [`AgentRecord::decode`] give a compact,
/// versioned byte form for key-value stores.
///
/// Implementations return boxed futures so the trait stays object safe:
///
/// ```
/// use opamp_proto::InstanceUid;
/// use opamp_server::{AgentRecord, AgentStore, BoxFuture, StoreError};
///
/// /// Keeps nothing: every agent looks new on every message.
/// struct Forgetful;
///
/// impl AgentStore for Forgetful {
///     fn load(&self, _uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
///         Box::pin(async { Ok(None) })
///     }
///     fn save(&self, _record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
///         Box::pin(async { Ok(()) })
///     }
///     fn remove(&self, _uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
///         Box::pin(async { Ok(()) })
///     }
///     fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
///         Box::pin(async { Ok(Vec::new()) })
///     }
/// }
/// ```
pub trait AgentStore: Send + Sync + 'static {
    /// The record of `uid`, or `None` if the agent is unknown.
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>>;
    /// Inserts or replaces the record of `record.uid`.
    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Deletes the record of `uid`; deleting an unknown uid is not an error.
    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every record, in no particular order.
    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>>;
    /// Whether a record of `uid` exists. The registry asks at every bare
    /// heartbeat, so that a record lost behind its back still makes it ask
    /// the agent for its full state (SEQ-07). The default calls
    /// [`load`](Self::load); override it when checking is cheaper.
    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.load(uid).await?.is_some()) })
    }
}

/// A shared store: several registries (server instances in one process)
/// can use one store object through clones of an `Arc`.
impl<S: AgentStore + ?Sized> AgentStore for Arc<S> {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        (**self).load(uid)
    }
    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).save(record)
    }
    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).remove(uid)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        (**self).list()
    }
    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        (**self).contains(uid)
    }
}

/// The default store: a map in memory, lost on restart.
///
/// Records are kept in their [`AgentRecord::encode`] form: a few hundred
/// bytes for a typical agent instead of the decoded structs (whose
/// `Bytes` fields may point into, and keep alive, the whole buffer of the
/// message they were decoded from). `load` decodes a copy.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: RwLock<HashMap<InstanceUid, Box<[u8]>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<InstanceUid, Box<[u8]>>> {
        self.records
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<InstanceUid, Box<[u8]>>> {
        self.records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AgentStore for MemoryStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        let record = self
            .read()
            .get(&uid)
            .map(|encoded| AgentRecord::decode(encoded))
            .transpose();
        Box::pin(async move { record })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let encoded = record.encode().into_boxed_slice();
        self.write().insert(record.uid, encoded);
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write().remove(&uid);
        Box::pin(async { Ok(()) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        let records = self
            .read()
            .values()
            .map(|encoded| AgentRecord::decode(encoded))
            .collect();
        Box::pin(async move { records })
    }

    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        let found = self.read().contains_key(&uid);
        Box::pin(async move { Ok(found) })
    }
}
