//! The fleet store: by default one redb database (a file, or memory for
//! tests) holding the registry's agent records and what the fleet server
//! keeps on top of them (configs, groups, config history, events); or
//! PostgreSQL (`opamp-server-postgres` for the agents, `store_pg` for the
//! rest), shared by several fleet server instances.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opamp_proto::{AgentConfigMap, InstanceUid, Message};
use opamp_server::{AgentRecord, AgentStore, BoxFuture};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction, backends::InMemoryBackend,
};
use serde::{Deserialize, Serialize};

use super::agent_query::{AgentPage, AgentQuery, ConnectedSet, Pager};
use super::store_pg::PgFleetData;
use super::store_worker::Worker;

/// `uid bytes → AgentRecord::encode()`: the registry's merged agent state.
const AGENTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("agents");
/// `uid bytes → AgentConfigMap`: configs set for one agent through the API.
const AGENT_CONFIGS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("agent_configs");
/// `name → value`: single fleet-wide values such as the default config.
const SETTINGS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("settings");
/// `group name → JSON StoredGroup`.
const GROUPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("groups");
/// `(uid, number) → JSON HistoryEntry`: every config offered to an agent.
const HISTORY: TableDefinition<'_, ([u8; 16], u64), &[u8]> = TableDefinition::new("config_history");
/// `(uid, number) → JSON AgentEvent`: recent things that happened to an agent.
const EVENTS: TableDefinition<'_, ([u8; 16], u64), &[u8]> = TableDefinition::new("events");

const DEFAULT_CONFIG_KEY: &str = "default_config";

/// How many config history entries are kept per agent.
pub(crate) const HISTORY_LIMIT: u64 = 50;
/// How many events are kept per agent.
pub(crate) const EVENT_LIMIT: u64 = 100;

/// A failure of the fleet store (redb or PostgreSQL).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetStoreError {
    /// The database could not be opened or created.
    #[error("cannot open the store: {0}")]
    Open(#[from] redb::DatabaseError),
    /// Creating the data directory failed.
    #[error("cannot create the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A read or write failed.
    #[error("store operation failed: {0}")]
    Database(#[from] redb::Error),
    /// A stored value could not be decoded.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// The store's reader or writer thread is gone.
    #[error("the store thread stopped")]
    Stopped,
    /// A PostgreSQL connection or query failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// redb's error types, each a [`redb::Error`].
macro_rules! from_redb_error {
    ($($error:ident),*) => {$(
        impl From<redb::$error> for FleetStoreError {
            fn from(error: redb::$error) -> Self {
                Self::Database(error.into())
            }
        }
    )*};
}

from_redb_error!(TransactionError, TableError, StorageError, CommitError);

/// A config group: agents whose attributes match `selector` get `config`
/// unless a config was set for them alone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    /// Attribute name → required value (identifying or non-identifying);
    /// every entry must match.
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) config: AgentConfigMap,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredGroup {
    selector: BTreeMap<String, String>,
    /// Protobuf-encoded `AgentConfigMap`, hex.
    config: String,
}

impl StoredGroup {
    pub(crate) fn from_group(group: Group) -> Self {
        Self {
            selector: group.selector,
            config: hex::encode(group.config.encode_to_vec()),
        }
    }

    pub(crate) fn into_group(self) -> Result<Group, FleetStoreError> {
        let bytes = hex::decode(&self.config)
            .map_err(|error| FleetStoreError::Corrupt(error.to_string()))?;
        Ok(Group {
            selector: self.selector,
            config: decode_config(&bytes)?,
        })
    }
}

/// Where the config offered to an agent came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub(crate) enum ConfigSource {
    /// Set for this agent alone.
    Agent,
    /// A group's config.
    Group(String),
    /// The fleet default.
    Default,
}

/// One config offered to an agent and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryEntry {
    /// `config_hash`, hex.
    pub(crate) config_hash: String,
    pub(crate) source: ConfigSource,
    pub(crate) files: Vec<String>,
    pub(crate) offered_at_ms: u64,
    /// `PENDING`, `APPLYING`, `APPLIED`, `FAILED`, or `SUPERSEDED` when a
    /// newer config replaced it before an outcome arrived.
    pub(crate) outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) error_message: String,
    pub(crate) updated_at_ms: u64,
}

impl HistoryEntry {
    /// Still waiting for an outcome.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.outcome.as_str(), "PENDING" | "APPLYING")
    }

    /// Closes an open entry that a newer offer replaced at `at_ms`.
    pub(crate) fn supersede(&mut self, at_ms: u64) {
        self.outcome = "SUPERSEDED".into();
        self.updated_at_ms = at_ms;
    }
}

/// The outcome an agent reported for the config with `config_hash`.
#[derive(Debug, Clone)]
pub(crate) struct Settlement {
    /// `config_hash`, hex.
    pub(crate) config_hash: String,
    pub(crate) outcome: String,
    pub(crate) error_message: String,
}

impl Settlement {
    /// Finds the newest entry with the config hash among `newest_first` and
    /// returns it (with its key) updated, or `None` when there is none or
    /// its outcome is already this one. Both stores settle with it.
    pub(crate) fn settle<K>(
        &self,
        newest_first: impl IntoIterator<Item = Result<(K, HistoryEntry), FleetStoreError>>,
        at_ms: u64,
    ) -> Result<Option<(K, HistoryEntry)>, FleetStoreError> {
        for item in newest_first {
            let (key, mut entry) = item?;
            if entry.config_hash != self.config_hash {
                continue;
            }
            if entry.outcome == self.outcome && entry.error_message == self.error_message {
                return Ok(None);
            }
            entry.outcome.clone_from(&self.outcome);
            entry.error_message.clone_from(&self.error_message);
            entry.updated_at_ms = at_ms;
            return Ok(Some((key, entry)));
        }
        Ok(None)
    }
}

/// Something that happened to an agent, for the page's event list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentEvent {
    pub(crate) at_ms: u64,
    pub(crate) kind: String,
    pub(crate) message: String,
    /// How many more times the same connection event happened since it was
    /// first recorded (`at_ms` is then the latest): a reconnect loop is one
    /// entry, not a hundred.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) repeats: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl AgentEvent {
    /// A new event (not repeated yet).
    pub(crate) fn new(kind: &str, message: String, at_ms: u64) -> Self {
        Self {
            at_ms,
            kind: kind.to_owned(),
            message,
            repeats: 0,
        }
    }

    /// Connection churn: coalesced when repeated, and the first to go when
    /// the history is full, so the offer or command that started a loop
    /// stays visible.
    pub(crate) fn is_churn(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "connected" | "disconnected" | "throttled" | "identity"
        )
    }
}

/// The fleet server's store: a redb database in a file or in memory, or a
/// PostgreSQL database shared by several instances. Cheap to clone. It is
/// the registry's [`AgentStore`], so agents and their last full state
/// survive a restart, and it keeps configs, groups, config history and
/// recent events beside them.
#[derive(Clone)]
pub struct FleetStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Redb(Arc<Redb>),
    Postgres {
        backend: opamp_server_postgres::PgBackend,
        agents: opamp_server_postgres::PgStore,
        fleet: PgFleetData,
    },
}

/// redb behind its reader and writer threads, and the uids it holds
/// records of: the registry asks at every heartbeat whether a record
/// exists, which must not cost a database read.
struct Redb {
    worker: Worker,
    known: RwLock<HashSet<InstanceUid>>,
}

impl Redb {
    fn known(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<InstanceUid>> {
        self.known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_known(&self, uid: InstanceUid) -> bool {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&uid)
    }
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore").finish_non_exhaustive()
    }
}

/// Methods of the fleet's data that both backends have ([`Redb`] and
/// [`PgFleetData`], with the same names and arguments), each sent to the
/// backend in use.
macro_rules! dispatch {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $type:ty),*) -> $output:ty;)*) => {$(
        $(#[$doc])*
        pub(crate) async fn $name(&self $(, $arg: $type)*) -> Result<$output, FleetStoreError> {
            match &self.backend {
                Backend::Redb(redb) => redb.$name($($arg),*).await,
                Backend::Postgres { fleet, .. } => fleet.$name($($arg),*).await,
            }
        }
    )*};
}

impl FleetStore {
    /// Opens (or creates) the store file `fleet.redb` in `data_dir`,
    /// creating the directory if needed.
    pub fn open(data_dir: &Path) -> Result<Self, FleetStoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = builder().create(data_dir.join("fleet.redb"))?;
        Self::with_database(db)
    }

    /// A store that lives in memory and is lost when dropped.
    pub fn in_memory() -> Result<Self, FleetStoreError> {
        let db = builder().create_with_backend(InMemoryBackend::new())?;
        Self::with_database(db)
    }

    fn with_database(db: Database) -> Result<Self, FleetStoreError> {
        // Create every table up front so that reads never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(AGENTS)?;
        txn.open_table(AGENT_CONFIGS)?;
        txn.open_table(SETTINGS)?;
        txn.open_table(GROUPS)?;
        txn.open_table(HISTORY)?;
        txn.open_table(EVENTS)?;
        txn.commit()?;
        let mut known = HashSet::new();
        {
            let txn = db.begin_read()?;
            for entry in txn.open_table(AGENTS)?.iter()? {
                let (uid, _) = entry?;
                if let Ok(bytes) = <[u8; 16]>::try_from(uid.value()) {
                    known.insert(InstanceUid::from_array(bytes));
                }
            }
        }
        Ok(Self {
            backend: Backend::Redb(Arc::new(Redb {
                worker: Worker::start(Arc::new(db))?,
                known: RwLock::new(known),
            })),
        })
    }

    /// Connects to PostgreSQL as server instance `instance` (unique among
    /// running instances): agent records and their routing through
    /// `opamp-server-postgres`, the fleet's own data in `fleet_*` tables
    /// (created if missing). Call inside a Tokio runtime.
    pub async fn postgres(
        config: opamp_server_postgres::Config,
        instance: &str,
    ) -> Result<Self, FleetStoreError> {
        let backend = opamp_server_postgres::PgBackend::connect(config.clone(), instance)
            .await
            .map_err(|error| FleetStoreError::Postgres(Box::new(error)))?;
        let fleet = PgFleetData::start(backend.pool().clone(), config, instance.to_owned()).await?;
        Ok(Self {
            backend: Backend::Postgres {
                agents: backend.store(),
                backend,
                fleet,
            },
        })
    }

    /// The PostgreSQL backend, when the store is on PostgreSQL: its bus
    /// must back the registry too.
    pub(crate) fn pg_backend(&self) -> Option<&opamp_server_postgres::PgBackend> {
        match &self.backend {
            Backend::Postgres { backend, .. } => Some(backend),
            Backend::Redb(_) => None,
        }
    }

    /// Changes made by other instances, when the store is shared.
    pub(crate) fn subscribe_changes(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<super::store_pg::FleetChange>> {
        match &self.backend {
            Backend::Postgres { fleet, .. } => Some(fleet.subscribe()),
            Backend::Redb(_) => None,
        }
    }

    /// Whether another instance sharing the store holds `uid`'s connection
    /// (always false for redb).
    pub(crate) async fn held_elsewhere(&self, uid: InstanceUid) -> Result<bool, FleetStoreError> {
        match self.pg() {
            Some(pg) => pg.held_by_live_instance(uid).await,
            None => Ok(false),
        }
    }

    /// Leaves a shared store once the OpAMP server has stopped: stops
    /// following other instances' changes and ends this instance's lease
    /// and WebSocket claims. Nothing to do for redb.
    pub async fn shutdown(&self) {
        if let Backend::Postgres { backend, fleet, .. } = &self.backend {
            fleet.stop();
            if let Err(error) = backend.shutdown().await {
                tracing::warn!(%error, "cannot leave the PostgreSQL fleet cleanly");
            }
        }
    }

    fn pg(&self) -> Option<&PgFleetData> {
        match &self.backend {
            Backend::Postgres { fleet, .. } => Some(fleet),
            Backend::Redb(_) => None,
        }
    }

    fn redb(&self) -> Result<&Redb, FleetStoreError> {
        match &self.backend {
            Backend::Redb(redb) => Ok(redb),
            Backend::Postgres { .. } => Err(FleetStoreError::Corrupt(
                "a redb operation on a PostgreSQL store".into(),
            )),
        }
    }

    /// Runs a read on the store's reader thread, off the async threads.
    async fn read<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, FleetStoreError> + Send + 'static,
    {
        self.redb()?.read(operation).await
    }

    /// Runs a write in the writer thread's next transaction (shared with
    /// the other writes waiting then) and returns once it is committed.
    async fn write<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, FleetStoreError> + Send + 'static,
    {
        self.redb()?.write(operation).await
    }

    // ---- agent records (the registry's storage) ----

    pub(crate) async fn load_record(
        &self,
        uid: InstanceUid,
    ) -> Result<Option<AgentRecord>, FleetStoreError> {
        self.read(move |db| read_value(db, AGENTS, uid.as_bytes().as_slice(), decode_record))
            .await
    }

    pub(crate) async fn save_record(&self, record: AgentRecord) -> Result<(), FleetStoreError> {
        let uid = record.uid;
        // Encoded here, on the caller's thread, so the writer only copies.
        let encoded = record.encode();
        drop(record);
        self.write(move |txn| {
            txn.open_table(AGENTS)?
                .insert(uid.as_bytes().as_slice(), encoded.as_slice())?;
            Ok(())
        })
        .await?;
        self.redb()?.known().insert(uid);
        Ok(())
    }

    pub(crate) async fn remove_record(&self, uid: InstanceUid) -> Result<(), FleetStoreError> {
        self.write(move |txn| {
            txn.open_table(AGENTS)?.remove(uid.as_bytes().as_slice())?;
            Ok(())
        })
        .await?;
        self.redb()?.known().remove(&uid);
        Ok(())
    }

    pub(crate) async fn list_records(&self) -> Result<Vec<AgentRecord>, FleetStoreError> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(AGENTS)?;
            let mut records = Vec::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
            for entry in table.iter()? {
                let (_, value) = entry?;
                match decode_record(value.value()) {
                    Ok(record) => records.push(record),
                    // One bad record must not hide the rest of the fleet.
                    Err(error) => tracing::warn!(%error, "skipping a corrupt agent record"),
                }
            }
            Ok(records)
        })
        .await
    }

    /// One page of agents matching `query`, in uid order, with counts over
    /// every match. redb: one read transaction scans the agents table in
    /// key (uid) order and keeps only the page; `connected` says which
    /// agents hold a connection. PostgreSQL: SQL on the agent table's
    /// filter columns with keyset pagination.
    pub(crate) async fn query_agents(
        &self,
        query: AgentQuery,
        connected: ConnectedSet,
    ) -> Result<AgentPage, FleetStoreError> {
        if let Some(pg) = self.pg() {
            return pg.query_agents(&query).await;
        }
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(AGENTS)?;
            let mut pager = Pager::new(&query);
            for entry in table.iter()? {
                let (_, value) = entry?;
                match decode_record(value.value()) {
                    Ok(record) => {
                        let is_connected = connected.contains(&record.uid);
                        pager.offer(record, is_connected);
                    }
                    Err(error) => tracing::warn!(%error, "skipping a corrupt agent record"),
                }
            }
            Ok(pager.finish())
        })
        .await
    }

    // ---- the fleet's data (configs, groups, history, events) ----

    dispatch! {
        /// The config set for `uid` alone, if any.
        fn agent_config(uid: InstanceUid) -> Option<AgentConfigMap>;
        /// The agents with a config of their own, in one read: a fleet-wide
        /// change skips them.
        fn agents_with_config() -> HashSet<InstanceUid>;
        /// Sets (`Some`) or clears (`None`) the config for `uid` alone.
        fn set_agent_config(uid: InstanceUid, config: Option<AgentConfigMap>) -> ();
        /// The config for agents with neither their own nor a group's.
        fn default_config() -> Option<AgentConfigMap>;
        /// Sets (`Some`) or clears (`None`) the default config.
        fn set_default_config(config: Option<AgentConfigMap>) -> ();
        /// Every group, by name.
        fn groups() -> BTreeMap<String, Group>;
        /// Inserts or replaces a group.
        fn put_group(name: String, group: Group) -> ();
        /// Deletes a group; true if it existed.
        fn remove_group(name: String) -> bool;
        /// Records a config offered to `uid`, marking still-open older
        /// entries superseded.
        fn push_history(uid: InstanceUid, entry: HistoryEntry) -> ();
        /// Sets the outcome of the newest history entry of `uid` with the
        /// settlement's config hash if it changed; returns the updated entry.
        fn settle_history(uid: InstanceUid, settlement: Settlement, at_ms: u64) -> Option<HistoryEntry>;
        /// The config history of `uid`, newest first.
        fn history(uid: InstanceUid) -> Vec<HistoryEntry>;
        /// Appends an event for `uid`, dropping the oldest beyond the limit.
        fn push_event(uid: InstanceUid, event: AgentEvent) -> ();
        /// Recent events of `uid`, newest first.
        fn events(uid: InstanceUid) -> Vec<AgentEvent>;
        /// Forgets everything about `uid`.
        fn forget_agent(uid: InstanceUid) -> ();
    }
}

/// The redb side of the fleet's data; [`PgFleetData`] is the PostgreSQL one.
impl Redb {
    /// Runs a read on the store's reader thread, off the async threads.
    async fn read<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, FleetStoreError> + Send + 'static,
    {
        self.worker.read(operation).await
    }

    /// Runs a write in the writer thread's next transaction (shared with
    /// the other writes waiting then) and returns once it is committed.
    async fn write<T, F>(&self, operation: F) -> Result<T, FleetStoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, FleetStoreError> + Send + 'static,
    {
        self.worker.write(operation).await
    }

    async fn agent_config(
        &self,
        uid: InstanceUid,
    ) -> Result<Option<AgentConfigMap>, FleetStoreError> {
        self.read(move |db| read_value(db, AGENT_CONFIGS, uid.as_bytes().as_slice(), decode_config))
            .await
    }

    async fn agents_with_config(&self) -> Result<HashSet<InstanceUid>, FleetStoreError> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let mut uids = HashSet::new();
            for entry in txn.open_table(AGENT_CONFIGS)?.iter()? {
                let (uid, _) = entry?;
                if let Ok(bytes) = <[u8; 16]>::try_from(uid.value()) {
                    uids.insert(InstanceUid::from_array(bytes));
                }
            }
            Ok(uids)
        })
        .await
    }

    async fn set_agent_config(
        &self,
        uid: InstanceUid,
        config: Option<AgentConfigMap>,
    ) -> Result<(), FleetStoreError> {
        let encoded = config.map(|config| config.encode_to_vec());
        self.write(move |txn| {
            let mut table = txn.open_table(AGENT_CONFIGS)?;
            put_or_remove(&mut table, uid.as_bytes().as_slice(), encoded.as_deref())
        })
        .await
    }

    async fn default_config(&self) -> Result<Option<AgentConfigMap>, FleetStoreError> {
        self.read(|db| read_value(db, SETTINGS, DEFAULT_CONFIG_KEY, decode_config))
            .await
    }

    async fn set_default_config(
        &self,
        config: Option<AgentConfigMap>,
    ) -> Result<(), FleetStoreError> {
        let encoded = config.map(|config| config.encode_to_vec());
        self.write(move |txn| {
            let mut table = txn.open_table(SETTINGS)?;
            put_or_remove(&mut table, DEFAULT_CONFIG_KEY, encoded.as_deref())
        })
        .await
    }

    async fn groups(&self) -> Result<BTreeMap<String, Group>, FleetStoreError> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(GROUPS)?;
            let mut groups = BTreeMap::new();
            for entry in table.iter()? {
                let (name, value) = entry?;
                let stored: StoredGroup = decode_json(value.value())?;
                groups.insert(name.value().to_owned(), stored.into_group()?);
            }
            Ok(groups)
        })
        .await
    }

    async fn put_group(&self, name: String, group: Group) -> Result<(), FleetStoreError> {
        let json = encode_json(&StoredGroup::from_group(group))?;
        self.write(move |txn| {
            txn.open_table(GROUPS)?
                .insert(name.as_str(), json.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn remove_group(&self, name: String) -> Result<bool, FleetStoreError> {
        self.write(move |txn| Ok(txn.open_table(GROUPS)?.remove(name.as_str())?.is_some()))
            .await
    }

    async fn push_history(
        &self,
        uid: InstanceUid,
        entry: HistoryEntry,
    ) -> Result<(), FleetStoreError> {
        let encoded = encode_json(&entry)?;
        let offered_at_ms = entry.offered_at_ms;
        self.write(move |txn| {
            let key = *uid.as_bytes();
            let mut table = txn.open_table(HISTORY)?;
            // Every offer closes the ones before it, so the open entries
            // are the newest few: read back from the newest to the first
            // closed one instead of decoding the whole history.
            let mut open = Vec::new();
            for item in newest_first::<HistoryEntry>(&table, key)? {
                let (number, old) = item?;
                if !old.is_open() {
                    break;
                }
                open.push((number, old));
            }
            for (number, mut old) in open {
                old.supersede(offered_at_ms);
                table.insert((key, number), encode_json(&old)?.as_slice())?;
            }
            append_bounded(&mut table, key, &encoded, HISTORY_LIMIT)
        })
        .await
    }

    async fn settle_history(
        &self,
        uid: InstanceUid,
        settlement: Settlement,
        at_ms: u64,
    ) -> Result<Option<HistoryEntry>, FleetStoreError> {
        self.write(move |txn| {
            let key = *uid.as_bytes();
            let mut table = txn.open_table(HISTORY)?;
            let Some((number, entry)) = settlement.settle(newest_first(&table, key)?, at_ms)?
            else {
                return Ok(None);
            };
            table.insert((key, number), encode_json(&entry)?.as_slice())?;
            Ok(Some(entry))
        })
        .await
    }

    async fn history(&self, uid: InstanceUid) -> Result<Vec<HistoryEntry>, FleetStoreError> {
        self.read(move |db| read_newest_first(db, HISTORY, *uid.as_bytes()))
            .await
    }

    async fn push_event(&self, uid: InstanceUid, event: AgentEvent) -> Result<(), FleetStoreError> {
        self.write(move |txn| {
            append_event(
                &mut txn.open_table(EVENTS)?,
                *uid.as_bytes(),
                event.clone(),
                EVENT_LIMIT,
            )
        })
        .await
    }

    async fn events(&self, uid: InstanceUid) -> Result<Vec<AgentEvent>, FleetStoreError> {
        self.read(move |db| read_newest_first(db, EVENTS, *uid.as_bytes()))
            .await
    }

    async fn forget_agent(&self, uid: InstanceUid) -> Result<(), FleetStoreError> {
        self.write(move |txn| {
            let key = *uid.as_bytes();
            txn.open_table(AGENTS)?.remove(key.as_slice())?;
            txn.open_table(AGENT_CONFIGS)?.remove(key.as_slice())?;
            txn.open_table(HISTORY)?
                .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
            txn.open_table(EVENTS)?
                .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
            Ok(())
        })
        .await?;
        self.known().remove(&uid);
        Ok(())
    }
}

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    // The fleet's data is small; the 1 GiB default would be wasted.
    builder.set_cache_size(16 * 1024 * 1024);
    builder
}

/// The value of `key` in the table `definition`, decoded.
fn read_value<'k, K: redb::Key + 'static, T>(
    db: &Database,
    definition: TableDefinition<'_, K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    decode: impl FnOnce(&[u8]) -> Result<T, FleetStoreError>,
) -> Result<Option<T>, FleetStoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(definition)?;
    let value = table.get(key)?;
    value.map(|bytes| decode(bytes.value())).transpose()
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<AgentRecord, FleetStoreError> {
    AgentRecord::decode(bytes).map_err(|error| FleetStoreError::Corrupt(error.to_string()))
}

pub(crate) fn decode_config(bytes: &[u8]) -> Result<AgentConfigMap, FleetStoreError> {
    AgentConfigMap::decode(bytes).map_err(|error| FleetStoreError::Corrupt(error.to_string()))
}

pub(crate) fn encode_json(value: &impl Serialize) -> Result<Vec<u8>, FleetStoreError> {
    serde_json::to_vec(value).map_err(|error| FleetStoreError::Corrupt(error.to_string()))
}

pub(crate) fn decode_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, FleetStoreError> {
    serde_json::from_slice(bytes).map_err(|error| FleetStoreError::Corrupt(error.to_string()))
}

/// Appends `value` after the last entry of `uid` and trims the oldest so at
/// most `limit` remain.
fn append_bounded(
    table: &mut redb::Table<'_, ([u8; 16], u64), &[u8]>,
    uid: [u8; 16],
    value: &[u8],
    limit: u64,
) -> Result<(), FleetStoreError> {
    let range = (uid, 0)..=(uid, u64::MAX);
    let next = match table.range(range.clone())?.next_back() {
        Some(last) => last?.0.value().1.saturating_add(1),
        None => 0,
    };
    table.insert((uid, next), value)?;
    if next >= limit {
        let oldest_kept = next + 1 - limit;
        table.retain_in((uid, 0)..(uid, oldest_kept), |_, _| false)?;
    }
    Ok(())
}

/// Appends `event` to `uid`'s history. A churn event equal to one of the
/// two newest (a connect/disconnect pair repeats as two) bumps that entry's
/// count instead. Past `limit` entries the oldest churn event goes first;
/// other events go only when nothing else is left to drop.
fn append_event(
    table: &mut redb::Table<'_, ([u8; 16], u64), &[u8]>,
    uid: [u8; 16],
    event: AgentEvent,
    limit: u64,
) -> Result<(), FleetStoreError> {
    let newest = newest_first(table, uid)?
        .take(2)
        .collect::<Result<Vec<(u64, AgentEvent)>, _>>()?;
    if let Some((number, merged)) = coalesce(&newest, &event) {
        table.insert((uid, number), encode_json(&merged)?.as_slice())?;
        return Ok(());
    }
    let next = newest
        .first()
        .map_or(0, |(number, _)| number.saturating_add(1));
    table.insert((uid, next), encode_json(&event)?.as_slice())?;
    // Counting needs no decoding: only a full log is decoded, to pick what goes.
    let range = (uid, 0)..=(uid, u64::MAX);
    let count = table.range(range.clone())?.count();
    if u64::try_from(count).unwrap_or(u64::MAX) <= limit {
        return Ok(());
    }
    let mut kept = Vec::new();
    for item in table.range(range)? {
        let (key, value) = item?;
        kept.push((
            key.value().1,
            decode_json::<AgentEvent>(value.value())?.is_churn(),
        ));
    }
    for number in events_to_drop(&kept, limit) {
        table.remove((uid, number))?;
    }
    Ok(())
}

/// What a churn event equal to one of the two newest entries of a log
/// (`newest_first`) becomes: that entry's key and the entry with its count
/// bumped and the new time. `None` when `event` is to be appended. Both
/// stores coalesce with it.
pub(crate) fn coalesce<'a, K: Copy + 'a>(
    newest_first: impl IntoIterator<Item = &'a (K, AgentEvent)>,
    event: &AgentEvent,
) -> Option<(K, AgentEvent)> {
    if !event.is_churn() {
        return None;
    }
    let (key, old) = newest_first
        .into_iter()
        .take(2)
        .find(|(_, old)| old.kind == event.kind && old.message == event.message)?;
    let merged = AgentEvent {
        at_ms: event.at_ms,
        repeats: old.repeats.saturating_add(1),
        ..event.clone()
    };
    Some((*key, merged))
}

/// Which events of a log (`(key, is churn)`, oldest first) go so that at most
/// `limit` stay: the oldest churn events first, then the oldest others. Both
/// stores trim their logs with it.
pub(crate) fn events_to_drop<K: Copy>(kept: &[(K, bool)], limit: u64) -> Vec<K> {
    let excess = kept
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    let churn = kept.iter().filter(|(_, churn)| *churn);
    let others = kept.iter().filter(|(_, churn)| !*churn);
    churn
        .chain(others)
        .map(|(key, _)| *key)
        .take(excess)
        .collect()
}

/// `uid`'s entries of a log table with their numbers, newest first.
fn newest_first<'t, T: for<'de> Deserialize<'de>>(
    table: &'t impl ReadableTable<([u8; 16], u64), &'static [u8]>,
    uid: [u8; 16],
) -> Result<impl Iterator<Item = Result<(u64, T), FleetStoreError>> + 't, FleetStoreError> {
    Ok(table.range((uid, 0)..=(uid, u64::MAX))?.rev().map(|item| {
        let (key, value) = item?;
        Ok((key.value().1, decode_json(value.value())?))
    }))
}

fn read_newest_first<T: for<'de> Deserialize<'de>>(
    db: &Database,
    definition: TableDefinition<'_, ([u8; 16], u64), &[u8]>,
    uid: [u8; 16],
) -> Result<Vec<T>, FleetStoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(definition)?;
    newest_first(&table, uid)?
        .map(|item| item.map(|(_, entry)| entry))
        .collect()
}

/// Inserts (`Some`) or removes (`None`) `key`.
fn put_or_remove<'k, K: redb::Key + 'static>(
    table: &mut redb::Table<'_, K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    value: Option<&[u8]>,
) -> Result<(), FleetStoreError> {
    match value {
        Some(value) => table.insert(key, value)?,
        None => table.remove(key)?,
    };
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The inverse of [`unix_ms`].
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn backend_error(error: FleetStoreError) -> opamp_server::StoreError {
    opamp_server::StoreError::backend(error)
}

/// On PostgreSQL, agent records are `opamp-server-postgres`'s (its
/// compare-and-set saves keep instances from overwriting each other).
impl AgentStore for FleetStore {
    fn load(
        &self,
        uid: InstanceUid,
    ) -> BoxFuture<'_, Result<Option<AgentRecord>, opamp_server::StoreError>> {
        if let Backend::Postgres { agents, .. } = &self.backend {
            return agents.load(uid);
        }
        Box::pin(async move { self.load_record(uid).await.map_err(backend_error) })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), opamp_server::StoreError>> {
        if let Backend::Postgres { agents, .. } = &self.backend {
            return agents.save(record);
        }
        Box::pin(async move { self.save_record(record).await.map_err(backend_error) })
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), opamp_server::StoreError>> {
        if let Backend::Postgres { agents, .. } = &self.backend {
            return agents.remove(uid);
        }
        Box::pin(async move { self.remove_record(uid).await.map_err(backend_error) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, opamp_server::StoreError>> {
        if let Backend::Postgres { agents, .. } = &self.backend {
            return agents.list();
        }
        Box::pin(async move { self.list_records().await.map_err(backend_error) })
    }

    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, opamp_server::StoreError>> {
        if let Backend::Postgres { agents, .. } = &self.backend {
            return agents.contains(uid);
        }
        let known = self.redb().map(|redb| redb.is_known(uid));
        Box::pin(async move { known.map_err(backend_error) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Appends a new event to `uid`'s log (for the tests of both stores).
    pub(crate) async fn push(
        store: &FleetStore,
        uid: InstanceUid,
        kind: &str,
        message: &str,
        at_ms: u64,
    ) {
        let event = AgentEvent::new(kind, message.to_owned(), at_ms);
        store.push_event(uid, event).await.unwrap();
    }

    /// A reconnect loop (the Collector supervisor answering every
    /// connection-settings offer by reconnecting, before the registry fix)
    /// must not push the offer that started it out of the history.
    #[tokio::test]
    async fn a_reconnect_loop_keeps_the_offer_that_started_it() {
        let store = FleetStore::in_memory().unwrap();
        let uid = InstanceUid::from_array([5; 16]);
        push(&store, uid, "settings", "offered heartbeat every 5s", 1).await;
        for round in 0..500u64 {
            push(&store, uid, "connected", "over WebSocket", 10 + 2 * round).await;
            push(
                &store,
                uid,
                "disconnected",
                "closed by agent",
                11 + 2 * round,
            )
            .await;
        }
        let events = store.events(uid).await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0].kind, "disconnected");
        assert_eq!(events[0].repeats, 499);
        assert_eq!(events[0].at_ms, 11 + 2 * 499);
        assert_eq!(events[1].kind, "connected");
        assert_eq!(events[1].repeats, 499);
        assert_eq!(events[2].kind, "settings", "the offer is still there");
    }

    /// Past the limit, churn goes before anything else; once only other
    /// events are left, the oldest of them goes.
    #[test]
    fn a_full_log_drops_the_oldest_churn_then_the_oldest_others() {
        // (key, is churn), oldest first.
        let log = [(1, false), (2, true), (3, false), (4, true), (5, false)];
        assert_eq!(events_to_drop(&log, 5), Vec::<i32>::new());
        assert_eq!(events_to_drop(&log, 4), [2]);
        assert_eq!(events_to_drop(&log, 3), [2, 4]);
        assert_eq!(events_to_drop(&log, 1), [2, 4, 1, 3]);
        assert_eq!(events_to_drop(&log, 0), [2, 4, 1, 3, 5]);
    }

    #[tokio::test]
    async fn a_full_history_drops_churn_first() {
        let store = FleetStore::in_memory().unwrap();
        let uid = InstanceUid::from_array([6; 16]);
        push(&store, uid, "command", "restart requested", 0).await;
        for n in 1..EVENT_LIMIT {
            // Different messages: nothing to coalesce.
            push(&store, uid, "connected", &format!("peer {n}"), n).await;
        }
        for n in 0..EVENT_LIMIT {
            push(&store, uid, "config", &format!("config {n}"), 1000 + n).await;
        }
        let events = store.events(uid).await.unwrap();
        assert_eq!(events.len() as u64, EVENT_LIMIT);
        assert!(events.iter().all(|event| event.kind == "config"));
        assert_eq!(events.last().unwrap().message, "config 0");
        push(&store, uid, "config", "one more", 5000).await;
        let events = store.events(uid).await.unwrap();
        assert_eq!(events.len() as u64, EVENT_LIMIT);
        assert_eq!(events.last().unwrap().message, "config 1");
    }
}
