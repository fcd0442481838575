//! The fleet's own data in PostgreSQL, beside `opamp-server-postgres`'s
//! agent tables, so that several fleet server instances share configs,
//! groups, the default config, config history and events.
//!
//! The tables are the fleet server's, not the library's: they are created
//! here (prefix `fleet_`), not by the library's migrations, so that users of
//! `opamp-server-postgres` do not get tables for an example application.
//!
//! Every change to an agent's events or to the fleet-wide configs is
//! announced with `NOTIFY` on [`CHANGES_CHANNEL`] (delivered at commit);
//! every instance listens and updates its page streams, so the page and
//! `GET /api/events` on any instance follow the whole fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use futures_util::StreamExt;
use opamp_proto::{AgentConfigMap, InstanceUid, Message};
use opamp_server::AgentRecord;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

use super::agent_query::{
    AgentPage, AgentQuery, ConfigCounts, ConfigState, Health, HealthCounts, Pager,
    SEARCHED_ATTRIBUTES, StatusCounts,
};
use super::store::{
    AgentEvent, EVENT_LIMIT, FleetStoreError, Group, HISTORY_LIMIT, HistoryEntry, Settlement,
    StoredGroup, coalesce, decode_config, decode_json, encode_json,
};

/// The channel every instance listens on. Payload: `agent <instance> <uid>`
/// or `config <instance>`.
pub(crate) const CHANGES_CHANNEL: &str = "fleet_changes";

/// The fleet's schema. `IF NOT EXISTS` plus an advisory lock: instances
/// starting together create it once.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_agent_configs (
    uid     uuid  PRIMARY KEY,
    config  bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_settings (
    name   text  PRIMARY KEY,
    value  bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_groups (
    name   text  PRIMARY KEY,
    -- JSON: {selector, config (hex)}, as in the redb store.
    value  bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_config_history (
    id     bigserial PRIMARY KEY,
    uid    uuid      NOT NULL,
    entry  bytea     NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_config_history_uid ON fleet_config_history (uid, id);
CREATE TABLE IF NOT EXISTS fleet_events (
    id     bigserial PRIMARY KEY,
    uid    uuid      NOT NULL,
    event  bytea     NOT NULL
);
CREATE INDEX IF NOT EXISTS fleet_events_uid ON fleet_events (uid, id);
";

/// Arbitrary constant keys for `pg_advisory_xact_lock`.
const SCHEMA_LOCK: i64 = 0x0f1e_e75c_4e3a;
const DEFAULT_CONFIG_KEY: &str = "default_config";

/// Something another instance (or this one) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetChange {
    /// An agent's events or history changed.
    Agent(InstanceUid),
    /// The default config or a group changed.
    Config,
    /// Notifications may have been lost (the listener reconnected).
    Resync,
}

/// The PostgreSQL half of the fleet store. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgFleetData {
    pool: Pool,
    instance: String,
    changes: broadcast::Sender<FleetChange>,
    listener: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn pg_error(error: impl std::error::Error + Send + Sync + 'static) -> FleetStoreError {
    FleetStoreError::Postgres(Box::new(error))
}

fn uuid(uid: InstanceUid) -> Uuid {
    Uuid::from_bytes(*uid.as_bytes())
}

fn instance_uid(uuid: Uuid) -> InstanceUid {
    InstanceUid::from_array(*uuid.as_bytes())
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// A connection's or a transaction's statements, with the store's error.
trait Sql: GenericClient {
    async fn run(&self, sql: &str, params: &Params<'_>) -> Result<u64, FleetStoreError> {
        self.execute(sql, params).await.map_err(pg_error)
    }

    async fn rows(&self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, FleetStoreError> {
        self.query(sql, params).await.map_err(pg_error)
    }

    async fn row(&self, sql: &str, params: &Params<'_>) -> Result<Row, FleetStoreError> {
        self.query_one(sql, params).await.map_err(pg_error)
    }

    async fn maybe_row(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, FleetStoreError> {
        self.query_opt(sql, params).await.map_err(pg_error)
    }
}

impl<C: GenericClient> Sql for C {}

/// One of the fleet's `key → bytes` tables.
struct KeyValue {
    table: &'static str,
    key: &'static str,
    value: &'static str,
}

const AGENT_CONFIGS: KeyValue = KeyValue {
    table: "fleet_agent_configs",
    key: "uid",
    value: "config",
};
const SETTINGS: KeyValue = KeyValue {
    table: "fleet_settings",
    key: "name",
    value: "value",
};
const GROUPS: KeyValue = KeyValue {
    table: "fleet_groups",
    key: "name",
    value: "value",
};

impl KeyValue {
    async fn get(
        &self,
        db: &impl Sql,
        key: &(dyn ToSql + Sync),
    ) -> Result<Option<Vec<u8>>, FleetStoreError> {
        let Self {
            table,
            key: column,
            value,
        } = self;
        let sql = format!("SELECT {value} FROM {table} WHERE {column} = $1");
        Ok(db.maybe_row(&sql, &[key]).await?.map(|row| row.get(0)))
    }

    async fn put(
        &self,
        db: &impl Sql,
        key: &(dyn ToSql + Sync),
        value: &[u8],
    ) -> Result<(), FleetStoreError> {
        let Self {
            table,
            key: column,
            value: value_column,
        } = self;
        let sql = format!(
            "INSERT INTO {table} ({column}, {value_column}) VALUES ($1, $2)
             ON CONFLICT ({column}) DO UPDATE SET {value_column} = EXCLUDED.{value_column}"
        );
        db.run(&sql, &[key, &value]).await?;
        Ok(())
    }

    /// Deletes `key`; whether it was there.
    async fn delete(
        &self,
        db: &impl Sql,
        key: &(dyn ToSql + Sync),
    ) -> Result<bool, FleetStoreError> {
        let Self {
            table, key: column, ..
        } = self;
        let sql = format!("DELETE FROM {table} WHERE {column} = $1");
        Ok(db.run(&sql, &[key]).await? > 0)
    }

    /// Puts (`Some`) or deletes (`None`) `key`.
    async fn set(
        &self,
        db: &impl Sql,
        key: &(dyn ToSql + Sync),
        value: Option<Vec<u8>>,
    ) -> Result<(), FleetStoreError> {
        match value {
            Some(value) => self.put(db, key, &value).await,
            None => self.delete(db, key).await.map(drop),
        }
    }
}

/// Per-agent transaction lock: history and event appends of one agent are
/// read-modify-write and may run on several instances at once.
fn agent_lock_key(uid: InstanceUid) -> i64 {
    let bytes = uid.as_bytes();
    let mut key = [0u8; 8];
    for (index, byte) in bytes.iter().enumerate() {
        key[index % 8] ^= *byte;
    }
    i64::from_be_bytes(key)
}

impl PgFleetData {
    /// Creates the fleet's tables if needed and starts listening for changes
    /// made by any instance.
    pub(crate) async fn start(
        pool: Pool,
        config: tokio_postgres::Config,
        instance: String,
    ) -> Result<Self, FleetStoreError> {
        let mut client = pool.get().await.map_err(pg_error)?;
        let txn = begin(&mut client).await?;
        txn.run("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        txn.batch_execute(SCHEMA).await.map_err(pg_error)?;
        txn.commit().await.map_err(pg_error)?;
        let (changes, _) = broadcast::channel(1024);
        let (listening_tx, mut listening) = tokio::sync::watch::channel(false);
        let listener = tokio::spawn(listen_forever(
            config,
            instance.clone(),
            changes.clone(),
            listening_tx,
        ));
        // Changes made before the first LISTEN are not ours to miss: wait
        // (bounded) so a freshly started instance follows from the start.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            listening.wait_for(|listening| *listening),
        )
        .await;
        Ok(Self {
            pool,
            instance,
            changes,
            listener: std::sync::Arc::new(std::sync::Mutex::new(Some(listener))),
        })
    }

    /// Stops listening for changes (at shutdown).
    pub(crate) fn stop(&self) {
        let listener = super::lock(&self.listener).take();
        if let Some(listener) = listener {
            listener.abort();
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<FleetChange> {
        self.changes.subscribe()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, FleetStoreError> {
        self.pool.get().await.map_err(pg_error)
    }

    /// Announces a change of `uid`'s history or events (`Some`) or of the
    /// fleet-wide configs (`None`) and commits `txn`: the notification is
    /// delivered at commit.
    async fn commit_notifying(
        &self,
        txn: Transaction<'_>,
        uid: Option<InstanceUid>,
    ) -> Result<(), FleetStoreError> {
        let payload = match uid {
            Some(uid) => format!("agent {} {uid}", self.instance),
            None => format!("config {}", self.instance),
        };
        txn.run("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &payload])
            .await?;
        txn.commit().await.map_err(pg_error)
    }

    /// Whether an instance with a live lease holds `uid`'s connection (an
    /// instance killed without a goodbye holds nothing once its lease ran
    /// out).
    pub(crate) async fn held_by_live_instance(
        &self,
        uid: InstanceUid,
    ) -> Result<bool, FleetStoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM opamp_agent_owner o
                     JOIN opamp_instances i ON i.name = o.instance
                    WHERE o.uid = $1 AND i.lease_expires > now())";
        Ok(self.client().await?.row(sql, &[&uuid(uid)]).await?.get(0))
    }

    pub(crate) async fn agent_config(
        &self,
        uid: InstanceUid,
    ) -> Result<Option<AgentConfigMap>, FleetStoreError> {
        let client = self.client().await?;
        let bytes = AGENT_CONFIGS.get(&client, &uuid(uid)).await?;
        bytes.as_deref().map(decode_config).transpose()
    }

    /// The agents with a config of their own.
    pub(crate) async fn agents_with_config(
        &self,
    ) -> Result<std::collections::HashSet<InstanceUid>, FleetStoreError> {
        let client = self.client().await?;
        let rows = client
            .rows("SELECT uid FROM fleet_agent_configs", &[])
            .await?;
        Ok(rows.iter().map(|row| instance_uid(row.get(0))).collect())
    }

    pub(crate) async fn set_agent_config(
        &self,
        uid: InstanceUid,
        config: Option<AgentConfigMap>,
    ) -> Result<(), FleetStoreError> {
        let client = self.client().await?;
        let encoded = config.map(|config| config.encode_to_vec());
        AGENT_CONFIGS.set(&client, &uuid(uid), encoded).await
    }

    pub(crate) async fn default_config(&self) -> Result<Option<AgentConfigMap>, FleetStoreError> {
        let client = self.client().await?;
        let bytes = SETTINGS.get(&client, &DEFAULT_CONFIG_KEY).await?;
        bytes.as_deref().map(decode_config).transpose()
    }

    pub(crate) async fn set_default_config(
        &self,
        config: Option<AgentConfigMap>,
    ) -> Result<(), FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        let encoded = config.map(|config| config.encode_to_vec());
        SETTINGS.set(&txn, &DEFAULT_CONFIG_KEY, encoded).await?;
        self.commit_notifying(txn, None).await
    }

    pub(crate) async fn groups(&self) -> Result<BTreeMap<String, Group>, FleetStoreError> {
        let client = self.client().await?;
        let rows = client
            .rows("SELECT name, value FROM fleet_groups ORDER BY name", &[])
            .await?;
        let mut groups = BTreeMap::new();
        for row in rows {
            let stored: StoredGroup = decode_json(row.get::<_, &[u8]>(1))?;
            groups.insert(row.get::<_, String>(0), stored.into_group()?);
        }
        Ok(groups)
    }

    pub(crate) async fn put_group(
        &self,
        name: String,
        group: Group,
    ) -> Result<(), FleetStoreError> {
        let json = encode_json(&StoredGroup::from_group(group))?;
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        GROUPS.put(&txn, &name, &json).await?;
        self.commit_notifying(txn, None).await
    }

    pub(crate) async fn remove_group(&self, name: String) -> Result<bool, FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        let removed = GROUPS.delete(&txn, &name).await?;
        self.commit_notifying(txn, None).await?;
        Ok(removed)
    }

    pub(crate) async fn push_history(
        &self,
        uid: InstanceUid,
        entry: HistoryEntry,
    ) -> Result<(), FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        let history: Vec<(i64, HistoryEntry)> =
            locked_log(&txn, uid, HISTORY, Order::OldestFirst).await?;
        for (id, mut old) in history {
            if old.is_open() {
                old.supersede(entry.offered_at_ms);
                HISTORY.update(&txn, id, &old).await?;
            }
        }
        HISTORY.append(&txn, uid, &entry).await?;
        let limit = i64::try_from(HISTORY_LIMIT).unwrap_or(i64::MAX);
        txn.run(
            "DELETE FROM fleet_config_history WHERE uid = $1 AND id NOT IN
             (SELECT id FROM fleet_config_history WHERE uid = $1 ORDER BY id DESC LIMIT $2)",
            &[&uuid(uid), &limit],
        )
        .await?;
        self.commit_notifying(txn, Some(uid)).await
    }

    pub(crate) async fn settle_history(
        &self,
        uid: InstanceUid,
        settlement: Settlement,
        at_ms: u64,
    ) -> Result<Option<HistoryEntry>, FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        let history = locked_log(&txn, uid, HISTORY, Order::NewestFirst).await?;
        let Some((id, entry)) = settlement.settle(history.into_iter().map(Ok), at_ms)? else {
            txn.commit().await.map_err(pg_error)?;
            return Ok(None);
        };
        HISTORY.update(&txn, id, &entry).await?;
        self.commit_notifying(txn, Some(uid)).await?;
        Ok(Some(entry))
    }

    pub(crate) async fn history(
        &self,
        uid: InstanceUid,
    ) -> Result<Vec<HistoryEntry>, FleetStoreError> {
        HISTORY.newest_first(&self.client().await?, uid).await
    }

    /// Appends an event with the same coalescing and trimming rules as the
    /// redb store (see `append_event` there).
    pub(crate) async fn push_event(
        &self,
        uid: InstanceUid,
        event: AgentEvent,
    ) -> Result<(), FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        let existing: Vec<(i64, AgentEvent)> =
            locked_log(&txn, uid, EVENTS, Order::OldestFirst).await?;
        if let Some((id, merged)) = coalesce(existing.iter().rev(), &event) {
            EVENTS.update(&txn, id, &merged).await?;
        } else {
            let id = EVENTS.append(&txn, uid, &event).await?;
            let mut kept: Vec<(i64, bool)> = existing
                .iter()
                .map(|(id, old)| (*id, old.is_churn()))
                .collect();
            kept.push((id, event.is_churn()));
            let doomed = super::store::events_to_drop(&kept, EVENT_LIMIT);
            if !doomed.is_empty() {
                txn.run("DELETE FROM fleet_events WHERE id = ANY($1)", &[&doomed])
                    .await?;
            }
        }
        self.commit_notifying(txn, Some(uid)).await
    }

    pub(crate) async fn events(
        &self,
        uid: InstanceUid,
    ) -> Result<Vec<AgentEvent>, FleetStoreError> {
        EVENTS.newest_first(&self.client().await?, uid).await
    }

    /// Forgets the fleet's data about `uid` (the registry removes the
    /// agent record itself).
    pub(crate) async fn forget_agent(&self, uid: InstanceUid) -> Result<(), FleetStoreError> {
        let mut client = self.client().await?;
        let txn = begin(&mut client).await?;
        for table in [AGENT_CONFIGS.table, HISTORY.table, EVENTS.table] {
            txn.run(
                &format!("DELETE FROM {table} WHERE uid = $1"),
                &[&uuid(uid)],
            )
            .await?;
        }
        txn.commit().await.map_err(pg_error)
    }
}

async fn begin(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, FleetStoreError> {
    client.transaction().await.map_err(pg_error)
}

/// The order of a log's entries (by id).
#[derive(Clone, Copy)]
enum Order {
    OldestFirst,
    NewestFirst,
}

/// One of the fleet's per-agent logs: `(id, uid, JSON)` rows in id order.
struct Log {
    table: &'static str,
    column: &'static str,
}

const HISTORY: Log = Log {
    table: "fleet_config_history",
    column: "entry",
};
const EVENTS: Log = Log {
    table: "fleet_events",
    column: "event",
};

impl Log {
    /// `uid`'s entries with their ids, in `order`.
    async fn entries<T: for<'de> Deserialize<'de>>(
        &self,
        db: &impl Sql,
        uid: InstanceUid,
        order: Order,
    ) -> Result<Vec<(i64, T)>, FleetStoreError> {
        let Self { table, column } = self;
        let order = match order {
            Order::OldestFirst => "ASC",
            Order::NewestFirst => "DESC",
        };
        let sql = format!("SELECT id, {column} FROM {table} WHERE uid = $1 ORDER BY id {order}");
        let rows = db.rows(&sql, &[&uuid(uid)]).await?;
        rows.iter()
            .map(|row| Ok((row.get(0), decode_json(row.get::<_, &[u8]>(1))?)))
            .collect()
    }

    async fn newest_first<T: for<'de> Deserialize<'de>>(
        &self,
        db: &impl Sql,
        uid: InstanceUid,
    ) -> Result<Vec<T>, FleetStoreError> {
        let entries = self.entries(db, uid, Order::NewestFirst).await?;
        Ok(entries.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Appends `value` for `uid`; its id.
    async fn append(
        &self,
        db: &impl Sql,
        uid: InstanceUid,
        value: &impl Serialize,
    ) -> Result<i64, FleetStoreError> {
        let Self { table, column } = self;
        let sql = format!("INSERT INTO {table} (uid, {column}) VALUES ($1, $2) RETURNING id");
        Ok(db
            .row(&sql, &[&uuid(uid), &encode_json(value)?])
            .await?
            .get(0))
    }

    async fn update(
        &self,
        db: &impl Sql,
        id: i64,
        value: &impl Serialize,
    ) -> Result<(), FleetStoreError> {
        let Self { table, column } = self;
        let sql = format!("UPDATE {table} SET {column} = $2 WHERE id = $1");
        db.run(&sql, &[&id, &encode_json(value)?]).await?;
        Ok(())
    }
}

/// `uid`'s entries in `log` (see [`Log::entries`]) once this transaction
/// holds the agent's lock.
async fn locked_log<T: for<'de> Deserialize<'de>>(
    txn: &Transaction<'_>,
    uid: InstanceUid,
    log: Log,
    order: Order,
) -> Result<Vec<(i64, T)>, FleetStoreError> {
    txn.run("SELECT pg_advisory_xact_lock($1)", &[&agent_lock_key(uid)])
        .await?;
    log.entries(txn, uid, order).await
}

fn parse_payload(payload: &str, own_instance: &str) -> Option<FleetChange> {
    let mut words = payload.split(' ');
    let kind = words.next()?;
    let instance = words.next()?;
    if instance == own_instance {
        // This instance already updated its pages when it made the change.
        return None;
    }
    match kind {
        "agent" => words
            .next()?
            .parse::<InstanceUid>()
            .ok()
            .map(FleetChange::Agent),
        "config" => Some(FleetChange::Config),
        _ => None,
    }
}

/// Listens on [`CHANGES_CHANNEL`] until the process ends, reconnecting with
/// backoff; after a reconnect, pages are told to reload (notifications sent
/// meanwhile are lost).
async fn listen_forever(
    config: tokio_postgres::Config,
    instance: String,
    changes: broadcast::Sender<FleetChange>,
    listening: tokio::sync::watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(notification) = message
                            && received_tx.send(notification).is_err()
                        {
                            break;
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        listening.send_replace(true);
                        if !first {
                            let _ = changes.send(FleetChange::Resync);
                        }
                        first = false;
                        while let Some(notification) = received.recv().await {
                            if let Some(change) = parse_payload(notification.payload(), &instance) {
                                let _ = changes.send(change);
                            }
                        }
                        tracing::warn!("fleet change listener disconnected; reconnecting");
                    }
                    Err(error) => tracing::warn!(%error, "cannot LISTEN for fleet changes"),
                }
                driver.abort();
            }
            Err(error) => tracing::warn!(%error, "cannot connect the fleet change listener"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

// ---- the agent list ----

/// The agent table's filter columns for description attributes.
fn attribute_column(key: &str) -> Option<&'static str> {
    Some(match key {
        "service.name" => "service_name",
        "service.namespace" => "service_namespace",
        "service.version" => "service_version",
        "service.instance.id" => "service_instance_id",
        "host.name" => "host_name",
        "os.type" => "os_type",
        _ => return None,
    })
}

/// The agent table with a `connected` column: the record says where the
/// agent is connected and that instance's lease is alive.
const AGENTS_WITH_CONNECTED: &str = "(SELECT a.*, (a.transport IS NOT NULL AND EXISTS (
        SELECT 1 FROM opamp_agent_owner o JOIN opamp_instances i ON i.name = o.instance
         WHERE o.uid = a.uid AND i.lease_expires > now())) AS connected
     FROM opamp_agents a) f";

type SqlParam = Box<dyn ToSql + Sync + Send>;

/// A `WHERE` clause and its parameters.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    params: Vec<SqlParam>,
}

impl Conditions {
    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, value: SqlParam) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "TRUE".into()
        } else {
            self.clauses.join(" AND ")
        }
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The filters SQL can apply; `false` when the attribute filter has no
/// column and must be applied to decoded records.
fn conditions(query: &AgentQuery) -> (Conditions, bool) {
    let mut conditions = Conditions::default();
    if let Some(connected) = query.connected {
        let placeholder = conditions.bind(Box::new(connected));
        conditions
            .clauses
            .push(format!("f.connected = {placeholder}"));
    }
    if let Some(state) = query.config {
        let clause = match state {
            ConfigState::None => "f.remote_config_state IS NULL",
            ConfigState::Pending => "f.remote_config_state = 'pending'",
            ConfigState::Applying => "f.remote_config_state = 'applying'",
            ConfigState::Applied => "f.remote_config_state = 'applied'",
            ConfigState::Failed => "f.remote_config_state = 'failed'",
        };
        conditions.clauses.push(clause.into());
    }
    if let Some(health) = query.health {
        let clause = match health {
            Health::Healthy => "f.healthy IS TRUE",
            Health::Unhealthy => "f.healthy IS FALSE",
            Health::Unknown => "f.healthy IS NULL",
        };
        conditions.clauses.push(clause.into());
    }
    if let Some(text) = &query.text {
        let placeholder = conditions.bind(Box::new(text.clone()));
        let mut fields = vec![format!("strpos(f.uid::text, {placeholder}) > 0")];
        fields.extend(SEARCHED_ATTRIBUTES.iter().filter_map(|key| {
            attribute_column(key)
                .map(|column| format!("strpos(lower(coalesce(f.{column}, '')), {placeholder}) > 0"))
        }));
        conditions
            .clauses
            .push(format!("({})", fields.join(" OR ")));
    }
    let mut in_sql = true;
    if let Some((key, value)) = &query.attribute {
        match attribute_column(key) {
            Some(column) => {
                let placeholder = conditions.bind(Box::new(value.clone()));
                conditions
                    .clauses
                    .push(format!("f.{column} = {placeholder}"));
            }
            None => in_sql = false,
        }
    }
    (conditions, in_sql)
}

fn count(row: &tokio_postgres::Row, index: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(index)).unwrap_or(0)
}

fn decode_record(row: &tokio_postgres::Row) -> Result<AgentRecord, FleetStoreError> {
    super::store::decode_record(row.get("record"))
}

impl PgFleetData {
    /// One page of agents matching `query`, in uid order. The filters run
    /// in SQL on the agent table's columns: one aggregate for the counts,
    /// one keyset query (`uid > cursor ORDER BY uid LIMIT n+1`) for the
    /// page. An attribute without a column is matched on decoded records
    /// streamed in uid order instead.
    pub(crate) async fn query_agents(
        &self,
        query: &AgentQuery,
    ) -> Result<AgentPage, FleetStoreError> {
        let client = self.client().await?;
        let (mut conditions, in_sql) = conditions(query);
        if !in_sql {
            let sql = format!(
                "SELECT f.uid, f.record, f.connected FROM {AGENTS_WITH_CONNECTED}
                  WHERE {} ORDER BY f.uid",
                conditions.sql()
            );
            let rows = client
                .query_raw(&sql, conditions.refs())
                .await
                .map_err(pg_error)?;
            let mut rows = std::pin::pin!(rows);
            let mut pager = Pager::new(query);
            while let Some(row) = rows.next().await {
                let row = row.map_err(pg_error)?;
                match decode_record(&row) {
                    Ok(record) => pager.offer(record, row.get("connected")),
                    Err(error) => tracing::warn!(%error, "skipping a corrupt agent record"),
                }
            }
            return Ok(pager.finish());
        }
        let counts_sql = format!(
            "SELECT count(*),
                    count(*) FILTER (WHERE f.connected),
                    count(*) FILTER (WHERE f.remote_config_state IS NULL),
                    count(*) FILTER (WHERE f.remote_config_state = 'pending'),
                    count(*) FILTER (WHERE f.remote_config_state = 'applying'),
                    count(*) FILTER (WHERE f.remote_config_state = 'applied'),
                    count(*) FILTER (WHERE f.remote_config_state = 'failed'),
                    count(*) FILTER (WHERE f.healthy IS TRUE),
                    count(*) FILTER (WHERE f.healthy IS FALSE),
                    count(*) FILTER (WHERE f.healthy IS NULL)
               FROM {AGENTS_WITH_CONNECTED} WHERE {}",
            conditions.sql()
        );
        let row = client.row(&counts_sql, &conditions.refs()).await?;
        let counts = StatusCounts {
            total: count(&row, 0),
            connected: count(&row, 1),
            disconnected: count(&row, 0).saturating_sub(count(&row, 1)),
            config: ConfigCounts {
                none: count(&row, 2),
                pending: count(&row, 3),
                applying: count(&row, 4),
                applied: count(&row, 5),
                failed: count(&row, 6),
            },
            health: HealthCounts {
                healthy: count(&row, 7),
                unhealthy: count(&row, 8),
                unknown: count(&row, 9),
            },
        };
        if let Some(after) = query.after {
            let placeholder = conditions.bind(Box::new(uuid(after)));
            conditions.clauses.push(format!("f.uid > {placeholder}"));
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
        let limit_placeholder = conditions.bind(Box::new(limit));
        let page_sql = format!(
            "SELECT f.uid, f.record, f.connected FROM {AGENTS_WITH_CONNECTED}
              WHERE {} ORDER BY f.uid LIMIT {limit_placeholder}",
            conditions.sql()
        );
        let rows = client.rows(&page_sql, &conditions.refs()).await?;
        let mut records = Vec::with_capacity(rows.len().min(query.limit));
        for row in rows.iter().take(query.limit) {
            match decode_record(row) {
                Ok(record) => records.push(record),
                Err(error) => tracing::warn!(%error, "skipping a corrupt agent record"),
            }
        }
        let next = if rows.len() > query.limit {
            rows.get(query.limit - 1)
                .map(|row| instance_uid(row.get("uid")))
        } else {
            None
        };
        Ok(AgentPage {
            records,
            next,
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::tests::push;
    use super::super::store::{ConfigSource, FleetStore};
    use super::*;

    fn entry(hash: &str, at_ms: u64) -> HistoryEntry {
        HistoryEntry {
            config_hash: hash.into(),
            source: ConfigSource::Default,
            files: vec!["a.yaml".into()],
            offered_at_ms: at_ms,
            outcome: "PENDING".into(),
            error_message: String::new(),
            updated_at_ms: at_ms,
        }
    }

    /// Two instances on one database: what one writes the other reads, one
    /// agent's events appended from both at once are all kept (coalesced
    /// the same way as in redb), and each hears of the other's changes.
    /// Agent `n`: service by `n % 3`, health by `n % 4`, remote config by
    /// `n % 5` (none, applied, failed, pending, applying).
    fn listed_record(n: u8) -> AgentRecord {
        use opamp_proto::{
            AgentDescription, AgentRemoteConfig, ComponentHealth, RemoteConfigStatus,
            RemoteConfigStatuses,
        };
        let mut record = AgentRecord::new(
            InstanceUid::from_array([n; 16]),
            std::time::SystemTime::UNIX_EPOCH,
        );
        record.status.description = Some(
            AgentDescription::for_service(
                ["checkout", "payments", "search"][usize::from(n % 3)],
                "1",
            )
            .with_non_identifying("host.name", format!("host-{n}"))
            .with_non_identifying("zone", ["a", "b"][usize::from(n % 2)]),
        );
        record.status.health = match n % 4 {
            0 => None,
            1 => Some(ComponentHealth {
                healthy: false,
                ..Default::default()
            }),
            _ => Some(ComponentHealth {
                healthy: true,
                ..Default::default()
            }),
        };
        let hash = bytes::Bytes::from(vec![n, 1, 2]);
        if !n.is_multiple_of(5) {
            record.desired.remote_config = Some(AgentRemoteConfig {
                config: Some(AgentConfigMap::default()),
                config_hash: hash.clone(),
            });
        }
        let reported = match n % 5 {
            1 => Some(RemoteConfigStatuses::Applied),
            2 => Some(RemoteConfigStatuses::Failed),
            4 => Some(RemoteConfigStatuses::Applying),
            _ => None,
        };
        record.status.remote_config_status = reported.map(|status| RemoteConfigStatus {
            last_remote_config_hash: hash,
            status: status as i32,
            error_message: String::new(),
        });
        record
    }

    /// The SQL list (filter columns, keyset pages) answers exactly as the
    /// redb scan does, for every filter, the counts and the cursors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sql_agent_pages_match_the_redb_scan() {
        use super::super::agent_query::{AgentQuery, ConfigState, Health};
        use opamp_server::AgentStore;
        let Some(config) = opamp_testkit::fresh_database("fleetlib").await else {
            return;
        };
        let pg = FleetStore::postgres(config, "lib-list").await.unwrap();
        let redb = FleetStore::in_memory().unwrap();
        for n in 1..=40u8 {
            AgentStore::save(&pg, listed_record(n)).await.unwrap();
            AgentStore::save(&redb, listed_record(n)).await.unwrap();
        }
        let query = |set: fn(&mut AgentQuery)| {
            let mut query = AgentQuery::default();
            set(&mut query);
            query
        };
        let queries = [
            query(|_| {}),
            query(|q| q.limit = 7),
            query(|q| q.connected = Some(false)),
            query(|q| q.connected = Some(true)),
            query(|q| q.config = Some(ConfigState::None)),
            query(|q| q.config = Some(ConfigState::Pending)),
            query(|q| q.config = Some(ConfigState::Applying)),
            query(|q| q.config = Some(ConfigState::Applied)),
            query(|q| (q.config, q.limit) = (Some(ConfigState::Failed), 3)),
            query(|q| (q.health, q.limit) = (Some(Health::Healthy), 5)),
            query(|q| q.health = Some(Health::Unhealthy)),
            query(|q| q.health = Some(Health::Unknown)),
            query(|q| q.attribute = Some(("service.name".into(), "payments".into()))),
            // No column for "zone": matched on decoded records.
            query(|q| (q.attribute, q.limit) = (Some(("zone".into(), "b".into())), 4)),
            query(|q| q.text = Some("host-1".into())),
            query(|q| q.text = Some("0a0a0a".into())),
            query(|q| (q.text, q.health) = (Some("check".into()), Some(Health::Healthy))),
        ];
        for query in queries {
            let mut query = query;
            let mut pages = 0;
            loop {
                let from_sql = pg
                    .query_agents(query.clone(), Default::default())
                    .await
                    .unwrap();
                let from_scan = redb
                    .query_agents(query.clone(), Default::default())
                    .await
                    .unwrap();
                let uids =
                    |page: &AgentPage| page.records.iter().map(|r| r.uid).collect::<Vec<_>>();
                assert_eq!(uids(&from_sql), uids(&from_scan), "{query:?}");
                assert_eq!(from_sql.counts, from_scan.counts, "{query:?}");
                assert_eq!(from_sql.next, from_scan.next, "{query:?}");
                pages += 1;
                match from_sql.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            assert!(pages <= 40, "{query:?}");
        }
        let all = pg
            .query_agents(AgentQuery::default(), Default::default())
            .await
            .unwrap();
        assert_eq!(all.counts.total, 40);
        assert_eq!(all.counts.config.applied, 8);
        assert_eq!(all.counts.health.unknown, 10);
        pg.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_history_events_and_changes() {
        let Some(config) = opamp_testkit::fresh_database("fleetlib").await else {
            return;
        };
        let one = FleetStore::postgres(config.clone(), "lib-one")
            .await
            .unwrap();
        let two = FleetStore::postgres(config, "lib-two").await.unwrap();
        let mut heard_by_two = two.subscribe_changes().expect("a shared store");
        let uid = InstanceUid::from_array([9; 16]);

        one.push_history(uid, entry("aa", 1)).await.unwrap();
        assert_eq!(
            heard_by_two.recv().await.unwrap(),
            FleetChange::Agent(uid),
            "NOTIFY reaches the other instance"
        );
        two.push_history(uid, entry("bb", 2)).await.unwrap();
        let settled = one
            .settle_history(
                uid,
                Settlement {
                    config_hash: "bb".into(),
                    outcome: "APPLIED".into(),
                    error_message: String::new(),
                },
                3,
            )
            .await
            .unwrap();
        assert_eq!(settled.map(|e| e.outcome), Some("APPLIED".into()));
        let history = two.history(uid).await.unwrap();
        let outcomes: Vec<_> = history
            .iter()
            .map(|e| (e.config_hash.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(outcomes, [("bb", "APPLIED"), ("aa", "SUPERSEDED")]);

        // 40 distinct events from each instance at the same time: all kept.
        let append = |store: FleetStore, name: &'static str| async move {
            for n in 0..40u64 {
                push(&store, uid, "config", &format!("{name} {n}"), n).await;
            }
        };
        tokio::join!(append(one.clone(), "one"), append(two.clone(), "two"));
        let events = one.events(uid).await.unwrap();
        assert_eq!(events.len(), 80);
        // A connect/disconnect loop from either instance is two entries.
        for round in 0..10u64 {
            let store = if round % 2 == 0 { &one } else { &two };
            push(store, uid, "connected", "over WebSocket", 100 + round).await;
            push(store, uid, "disconnected", "closed by agent", 100 + round).await;
        }
        let events = two.events(uid).await.unwrap();
        assert_eq!(events.len(), 82);
        assert_eq!(
            (events[0].kind.as_str(), events[0].repeats),
            ("disconnected", 9)
        );
        assert_eq!(
            (events[1].kind.as_str(), events[1].repeats),
            ("connected", 9)
        );
        // Past the limit, churn goes first, then the oldest.
        for n in 0..30u64 {
            push(&one, uid, "health", &format!("h{n}"), 200 + n).await;
        }
        let events = two.events(uid).await.unwrap();
        assert_eq!(events.len() as u64, EVENT_LIMIT);
        assert!(events.iter().all(|e| !e.is_churn()), "churn dropped first");

        // Fleet-wide config: the other instance hears of it and reads it.
        let mut heard_by_one = one.subscribe_changes().unwrap();
        let mut config_map = AgentConfigMap::default();
        config_map
            .config_map
            .insert("a.yaml".into(), Default::default());
        two.set_default_config(Some(config_map.clone()))
            .await
            .unwrap();
        loop {
            match heard_by_one.recv().await.unwrap() {
                FleetChange::Config => break,
                FleetChange::Agent(_) | FleetChange::Resync => {}
            }
        }
        assert_eq!(one.default_config().await.unwrap(), Some(config_map));

        two.forget_agent(uid).await.unwrap();
        assert!(one.events(uid).await.unwrap().is_empty());
        assert!(one.history(uid).await.unwrap().is_empty());
        one.shutdown().await;
        two.shutdown().await;
    }

    #[test]
    fn payloads_from_other_instances_become_changes() {
        let uid = InstanceUid::from_array([7; 16]);
        assert_eq!(
            parse_payload(&format!("agent b-1 {uid}"), "a-1"),
            Some(FleetChange::Agent(uid))
        );
        assert_eq!(parse_payload(&format!("agent a-1 {uid}"), "a-1"), None);
        assert_eq!(
            parse_payload("config b-1", "a-1"),
            Some(FleetChange::Config)
        );
        assert_eq!(parse_payload("bogus", "a-1"), None);
    }
}
