//! Where the registry keeps agent records.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use opamp_proto::InstanceUid;

use crate::error::StoreError;
use crate::record::AgentRecord;

/// The future returned by [`AgentStore`] and [`MessageBus`](crate::MessageBus)
/// methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Persistent storage of [`AgentRecord`]s, keyed by instance uid.
///
/// The registry loads a record, changes it and saves it back for every
/// agent message and every offer. Within one server instance the registry
/// serialises those read-modify-write steps per agent; a store shared by
/// several instances must make `save` safe against concurrent writers itself
/// (an agent's messages normally reach one instance, so last-writer-wins is
/// usually enough). [`AgentRecord::encode`] / [`AgentRecord::decode`] give a
/// compact, versioned byte form for key-value stores.
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
}

/// The default store: a map in memory, lost on restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: RwLock<HashMap<InstanceUid, AgentRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<InstanceUid, AgentRecord>> {
        self.records
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<InstanceUid, AgentRecord>> {
        self.records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AgentStore for MemoryStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        let record = self.read().get(&uid).cloned();
        Box::pin(async move { Ok(record) })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write().insert(record.uid, record);
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write().remove(&uid);
        Box::pin(async { Ok(()) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        let records = self.read().values().cloned().collect();
        Box::pin(async move { Ok(records) })
    }
}
