//! `PgStore`: agent records in `opamp_agents`, written with compare-and-set.

use std::hash::{DefaultHasher, Hasher};

use opamp_proto::{AnyValue, InstanceUid, Message};
use opamp_server::{
    AgentRecord, AgentStore, BoxFuture, DesiredState, RemoteConfigState, StoreError,
};
use tokio_postgres::Row;

use std::sync::Arc;

use crate::error::{PgError, SaveConflict};
use crate::shared::{Base, Inner, Prints, Shared, lock, to_uuid, transport_name};

/// How many times a save re-reads and merges after losing a
/// compare-and-set before it gives up with [`SaveConflict::Contended`].
const SAVE_ATTEMPTS: u32 = 5;

/// An [`AgentStore`] on PostgreSQL: one row per agent in `opamp_agents`,
/// holding [`AgentRecord::encode`] plus columns to filter and sort by.
///
/// # Concurrent writers
///
/// Every row has a `version`. [`load`](AgentStore::load) remembers the
/// version it read (and a fingerprint of each part of the record) per agent;
/// [`save`](AgentStore::save) is one statement that writes only if the row
/// still has that version. When another instance wrote in between, the save
/// reads the row again and merges, three ways, against what was loaded:
///
/// - what the agent reported (status, bookkeeping, connection) is taken from
///   the side that changed it, this save's when both did: only the instance
///   holding the agent's connection hears from it;
/// - each part of the desired state (remote config, packages, connection
///   settings) is taken from the side that changed it. When both changed the
///   same part differently the save fails with
///   [`SaveConflict::DesiredStateChanged`]: desired state is never
///   overwritten blindly.
///
/// When this instance holds a claim on the agent ([`PgBus::claim`]) and the
/// save changes what the agent reported, the statement also checks that no
/// newer claim exists: a stale owner gets [`SaveConflict::StaleOwner`]
/// instead of overwriting the new owner's view.
///
/// The save compares against the oldest load of the agent not yet saved
/// over, because the trait does not say which load a save comes from (a
/// read-only load may fall in between): an older base costs at most a
/// re-read and a merge, a newer one could hide another writer's change. A
/// save without any load of the agent (the registry always loads first)
/// starts from the row as it is: reported state is written, desired state
/// that differs from the row's is a conflict.
///
/// [`contains`](AgentStore::contains) answers from memory for agents this
/// instance has seen stored, so bare heartbeats cost no round trip; removals
/// by other instances arrive by NOTIFY.
///
/// [`PgBus::claim`]: crate::PgBus::claim
#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
}

const DESIRED_PARTS: [&str; 3] = ["remote_config", "packages", "connection_settings"];

impl Prints {
    fn of(record: &AgentRecord) -> Self {
        let mut reported_only = record.clone();
        reported_only.desired = DesiredState::default();
        let desired = &record.desired;
        Self {
            reported: fingerprint(&reported_only.encode()),
            desired: [
                fingerprint_part(desired.remote_config.as_ref()),
                fingerprint_part(desired.packages.as_ref()),
                fingerprint_part(desired.connection_settings.as_ref()),
            ],
        }
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

fn fingerprint_part<M: Message>(part: Option<&M>) -> u64 {
    let mut hasher = DefaultHasher::new();
    match part {
        None => hasher.write_u8(0),
        Some(message) => {
            hasher.write_u8(1);
            hasher.write(&message.encode_to_vec());
        }
    }
    hasher.finish()
}

fn set_desired_part(target: &mut DesiredState, source: &DesiredState, part: usize) {
    match part {
        0 => target.remote_config = source.remote_config.clone(),
        1 => target.packages = source.packages.clone(),
        _ => target.connection_settings = source.connection_settings.clone(),
    }
}

/// The three-way merge of a save that lost its compare-and-set.
/// `base` is what was loaded (`None`: nothing known), `theirs` the row now.
fn merge(
    uid: InstanceUid,
    base: Option<Prints>,
    mine: &AgentRecord,
    theirs: Option<&AgentRecord>,
) -> Result<AgentRecord, SaveConflict> {
    let mine_prints = Prints::of(mine);
    let Some(theirs) = theirs else {
        let reported_changed = base.is_none_or(|base| base.reported != mine_prints.reported);
        return if reported_changed {
            // The agent is alive and reporting: its record comes back.
            Ok(mine.clone())
        } else {
            Err(SaveConflict::Removed { uid })
        };
    };
    let their_prints = Prints::of(theirs);
    let base_known = base.is_some();
    // Without a base, everything reported counts as changed here (only the
    // connection holder saves without desired changes) and every desired
    // difference is a conflict.
    let base = base.unwrap_or(Prints {
        reported: !mine_prints.reported,
        desired: their_prints.desired,
    });
    let mut merged = if mine_prints.reported != base.reported {
        mine.clone()
    } else {
        theirs.clone()
    };
    for (part, name) in DESIRED_PARTS.iter().enumerate() {
        let mine_changed = mine_prints.desired[part] != base.desired[part];
        let theirs_changed = their_prints.desired[part] != base.desired[part];
        let source = match (mine_changed, theirs_changed) {
            (false, _) => &theirs.desired,
            (true, false) if base_known => &mine.desired,
            (true, true) if mine_prints.desired[part] == their_prints.desired[part] => {
                &mine.desired
            }
            _ => {
                return Err(SaveConflict::DesiredStateChanged { uid, part: name });
            }
        };
        set_desired_part(&mut merged.desired, source, part);
    }
    Ok(merged)
}

/// The columns a fleet UI filters and sorts by, taken from the record.
struct Columns {
    service_name: Option<String>,
    service_namespace: Option<String>,
    service_version: Option<String>,
    service_instance_id: Option<String>,
    host_name: Option<String>,
    os_type: Option<String>,
    transport: Option<&'static str>,
    remote_config_state: Option<&'static str>,
    healthy: Option<bool>,
}

impl Columns {
    fn of(record: &AgentRecord) -> Self {
        let description = record.status.description.as_ref();
        let attribute = |key: &str| {
            description
                .and_then(|description| {
                    description
                        .identifying(key)
                        .or_else(|| description.non_identifying(key))
                })
                .map(AnyValue::to_display_string)
        };
        Self {
            service_name: attribute("service.name"),
            service_namespace: attribute("service.namespace"),
            service_version: attribute("service.version"),
            service_instance_id: attribute("service.instance.id"),
            host_name: attribute("host.name"),
            os_type: attribute("os.type"),
            transport: record
                .connection
                .as_ref()
                .map(|connection| transport_name(connection.transport)),
            remote_config_state: record.remote_config_state().map(|state| match state {
                RemoteConfigState::Pending => "pending",
                RemoteConfigState::Applying => "applying",
                RemoteConfigState::Applied => "applied",
                RemoteConfigState::Failed { .. } => "failed",
                _ => "unknown",
            }),
            healthy: record.status.health.as_ref().map(|health| health.healthy),
        }
    }
}

/// Insert or compare-and-set update in one statement. `$3` is the expected
/// version (0: the row must not exist); `$4` the fencing epoch (NULL: no
/// fence). No row back means the compare-and-set or the fence failed.
const SAVE: &str = "
INSERT INTO opamp_agents AS a (uid, version, record, service_name, service_namespace,
    service_version, service_instance_id, host_name, os_type, transport, connected_instance,
    first_seen, last_seen, remote_config_state, healthy)
SELECT $1, 1, $2, $5, $6, $7, $8, $9, $10, $11,
    CASE WHEN $11::text IS NULL THEN NULL ELSE $12 END, $13, $14, $15, $16
WHERE NOT EXISTS (SELECT 1 FROM opamp_agent_owner o WHERE o.uid = $1 AND o.epoch > $4)
ON CONFLICT (uid) DO UPDATE SET
    version = a.version + 1,
    record = EXCLUDED.record,
    service_name = EXCLUDED.service_name,
    service_namespace = EXCLUDED.service_namespace,
    service_version = EXCLUDED.service_version,
    service_instance_id = EXCLUDED.service_instance_id,
    host_name = EXCLUDED.host_name,
    os_type = EXCLUDED.os_type,
    transport = EXCLUDED.transport,
    connected_instance = CASE
        WHEN EXCLUDED.transport IS NULL THEN NULL
        WHEN $17 THEN EXCLUDED.connected_instance
        ELSE a.connected_instance END,
    first_seen = EXCLUDED.first_seen,
    last_seen = EXCLUDED.last_seen,
    remote_config_state = EXCLUDED.remote_config_state,
    healthy = EXCLUDED.healthy,
    updated_at = now()
WHERE a.version = $3
RETURNING version";

/// The row and the owner epoch, read after a lost compare-and-set.
const REREAD: &str = "
SELECT (SELECT epoch FROM opamp_agent_owner WHERE uid = $1), a.version, a.record
FROM (SELECT 1) AS one LEFT JOIN opamp_agents a ON a.uid = $1";

impl PgStore {
    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    async fn load_row(&self, uid: InstanceUid) -> Result<Option<AgentRecord>, PgError> {
        let shared = self.shared();
        let client = shared.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT version, record FROM opamp_agents WHERE uid = $1")
            .await?;
        let row = client.query_opt(&statement, &[&to_uuid(uid)]).await?;
        let Some(row) = row else {
            remember_base(
                shared,
                uid,
                Base {
                    version: 0,
                    prints: Prints::of(&AgentRecord::new(uid, std::time::UNIX_EPOCH)),
                },
            );
            lock(&shared.present).remove(&uid);
            return Ok(None);
        };
        let version: i64 = row.get(0);
        let record = decode(&row, 1)?;
        remember_base(
            shared,
            uid,
            Base {
                version,
                prints: Prints::of(&record),
            },
        );
        lock(&shared.present).insert(uid);
        Ok(Some(record))
    }

    async fn save_record(&self, record: AgentRecord) -> Result<(), StoreError> {
        let shared = self.shared();
        let uid = record.uid;
        let base = lock(&shared.bases).get(&uid).copied();
        let claim = lock(&shared.claims).get(&uid).copied();
        let client = shared.pool.get().await.map_err(StoreError::backend)?;
        let save = client
            .prepare_cached(SAVE)
            .await
            .map_err(StoreError::backend)?;
        let mut mine = record;
        // A base of version 0 is "no row": the insert must be the first.
        let mut expected = base.map_or(-1, |base| base.version);
        let mut base_prints = base.map(|base| base.prints);
        for _attempt in 0..SAVE_ATTEMPTS {
            let prints = Prints::of(&mine);
            let reported_changed = base_prints.is_none_or(|base| base.reported != prints.reported);
            // Only what the agent reported is fenced: desired state may be
            // set from any instance.
            let fence = claim.filter(|_| reported_changed).map(|claim| claim.epoch);
            let columns = Columns::of(&mine);
            let encoded = mine.encode();
            let row = client
                .query_opt(
                    &save,
                    &[
                        &to_uuid(uid),
                        &encoded,
                        &expected,
                        &fence,
                        &columns.service_name,
                        &columns.service_namespace,
                        &columns.service_version,
                        &columns.service_instance_id,
                        &columns.host_name,
                        &columns.os_type,
                        &columns.transport,
                        &shared.instance,
                        &mine.first_seen,
                        &mine.last_seen,
                        &columns.remote_config_state,
                        &columns.healthy,
                        &reported_changed,
                    ],
                )
                .await
                .map_err(StoreError::backend)?;
            if let Some(row) = row {
                let version: i64 = row.get(0);
                lock(&shared.bases).insert(uid, Base { version, prints });
                lock(&shared.present).insert(uid);
                return Ok(());
            }
            // Lost: someone else wrote, or a newer claim exists.
            let reread = client
                .prepare_cached(REREAD)
                .await
                .map_err(StoreError::backend)?;
            let row = client
                .query_one(&reread, &[&to_uuid(uid)])
                .await
                .map_err(StoreError::backend)?;
            let owner_epoch: Option<i64> = row.get(0);
            if let (Some(epoch), Some(current)) = (fence, owner_epoch) {
                if current > epoch {
                    lock(&shared.bases).remove(&uid);
                    return Err(StoreError::NotOwner(Box::new(SaveConflict::StaleOwner {
                        uid,
                        epoch,
                        current,
                    })));
                }
            }
            let theirs_version: Option<i64> = row.get(1);
            let theirs = match theirs_version {
                Some(_) => Some(decode(&row, 2).map_err(to_store_error)?),
                None => None,
            };
            tracing::debug!(%uid, expected, ?theirs_version, "agent record changed by another writer; merging");
            mine = merge(uid, base_prints, &mine, theirs.as_ref()).map_err(|conflict| {
                lock(&shared.bases).remove(&uid);
                StoreError::backend(conflict)
            })?;
            // The merge result is now relative to the row just read.
            expected = theirs_version.unwrap_or(0);
            base_prints = Some(match &theirs {
                Some(theirs) => Prints::of(theirs),
                None => Prints::of(&AgentRecord::new(uid, std::time::UNIX_EPOCH)),
            });
        }
        lock(&shared.bases).remove(&uid);
        Err(StoreError::backend(SaveConflict::Contended {
            uid,
            attempts: SAVE_ATTEMPTS,
        }))
    }
}

/// Records what a load read, unless an older load of the same agent has not
/// been saved over yet: the save may come from that older read (a read-only
/// load, such as `Registry::agent`, can fall between a load and its save),
/// and comparing against an older base only costs a re-read and a merge,
/// while a newer one would hide another writer's change.
fn remember_base(shared: &Shared, uid: InstanceUid, base: Base) {
    let mut bases = lock(&shared.bases);
    match bases.get(&uid) {
        Some(older) if older.version <= base.version => {}
        _ => {
            bases.insert(uid, base);
        }
    }
}

fn decode(row: &Row, column: usize) -> Result<AgentRecord, PgError> {
    let bytes: &[u8] = row.get(column);
    AgentRecord::decode(bytes).map_err(|error| PgError::Corrupt(error.to_string()))
}

fn to_store_error(error: PgError) -> StoreError {
    match error {
        PgError::Corrupt(message) => StoreError::Corrupt(message),
        other => StoreError::backend(other),
    }
}

impl AgentStore for PgStore {
    fn load(&self, uid: InstanceUid) -> BoxFuture<'_, Result<Option<AgentRecord>, StoreError>> {
        Box::pin(async move { self.load_row(uid).await.map_err(to_store_error) })
    }

    fn save(&self, record: AgentRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.save_record(record))
    }

    fn remove(&self, uid: InstanceUid) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let shared = self.shared();
            let client = shared.pool.get().await.map_err(StoreError::backend)?;
            // Other instances drop the agent from their `contains` cache.
            let statement = client
                .prepare_cached(
                    "WITH gone AS (DELETE FROM opamp_agents WHERE uid = $1 RETURNING uid)
                     SELECT pg_notify('opamp_removed', $2) FROM gone",
                )
                .await
                .map_err(StoreError::backend)?;
            client
                .query(
                    &statement,
                    &[&to_uuid(uid), &uid.to_uuid().simple().to_string()],
                )
                .await
                .map_err(StoreError::backend)?;
            lock(&shared.bases).remove(&uid);
            lock(&shared.present).remove(&uid);
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        Box::pin(async move {
            let client = self
                .shared()
                .pool
                .get()
                .await
                .map_err(StoreError::backend)?;
            let rows = client
                .query("SELECT record FROM opamp_agents", &[])
                .await
                .map_err(StoreError::backend)?;
            rows.iter()
                .map(|row| decode(row, 0).map_err(to_store_error))
                .collect()
        })
    }

    fn contains(&self, uid: InstanceUid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let shared = self.shared();
            if lock(&shared.present).contains(&uid) {
                return Ok(true);
            }
            let client = shared.pool.get().await.map_err(StoreError::backend)?;
            let statement = client
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM opamp_agents WHERE uid = $1)")
                .await
                .map_err(StoreError::backend)?;
            let found: bool = client
                .query_one(&statement, &[&to_uuid(uid)])
                .await
                .map_err(StoreError::backend)?
                .get(0);
            if found {
                lock(&shared.present).insert(uid);
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{AgentConfigMap, AgentDescription, AgentRemoteConfig, PackagesAvailable};
    use std::time::{Duration, UNIX_EPOCH};

    fn record() -> AgentRecord {
        AgentRecord::new(
            InstanceUid::from_array([7; 16]),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn config(hash: u8) -> AgentRemoteConfig {
        AgentRemoteConfig {
            config: Some(AgentConfigMap::default()),
            config_hash: vec![hash].into(),
        }
    }

    #[test]
    fn desired_set_elsewhere_survives_a_status_save() {
        let base = record();
        let mut mine = base.clone();
        mine.status.description = Some(AgentDescription::for_service("svc", "1"));
        let mut theirs = base.clone();
        theirs.desired.remote_config = Some(config(1));
        let merged = merge(base.uid, Some(Prints::of(&base)), &mine, Some(&theirs)).unwrap();
        assert_eq!(merged.status, mine.status);
        assert_eq!(merged.desired.remote_config, Some(config(1)));
    }

    #[test]
    fn different_desired_parts_merge_and_the_same_part_conflicts() {
        let base = record();
        let mut mine = base.clone();
        mine.desired.packages = Some(PackagesAvailable::default());
        let mut theirs = base.clone();
        theirs.desired.remote_config = Some(config(1));
        let merged = merge(base.uid, Some(Prints::of(&base)), &mine, Some(&theirs)).unwrap();
        assert_eq!(merged.desired.remote_config, Some(config(1)));
        assert_eq!(merged.desired.packages, Some(PackagesAvailable::default()));

        mine.desired.remote_config = Some(config(2));
        assert_eq!(
            merge(base.uid, Some(Prints::of(&base)), &mine, Some(&theirs)),
            Err(SaveConflict::DesiredStateChanged {
                uid: base.uid,
                part: "remote_config"
            })
        );
        // Both set the same value: no conflict.
        mine.desired.remote_config = Some(config(1));
        assert!(merge(base.uid, Some(Prints::of(&base)), &mine, Some(&theirs)).is_ok());
    }

    #[test]
    fn reported_state_comes_from_the_side_that_changed_it() {
        let base = record();
        let mut mine = base.clone();
        mine.desired.remote_config = Some(config(3));
        let mut theirs = base.clone();
        theirs.status.description = Some(AgentDescription::for_service("svc", "2"));
        let merged = merge(base.uid, Some(Prints::of(&base)), &mine, Some(&theirs)).unwrap();
        assert_eq!(
            merged.status, theirs.status,
            "theirs reported, mine did not"
        );
        assert_eq!(merged.desired.remote_config, Some(config(3)));
    }

    #[test]
    fn a_removed_record_comes_back_only_for_reported_state() {
        let base = record();
        let mut desired_only = base.clone();
        desired_only.desired.remote_config = Some(config(1));
        assert_eq!(
            merge(base.uid, Some(Prints::of(&base)), &desired_only, None),
            Err(SaveConflict::Removed { uid: base.uid })
        );
        let mut reported = base.clone();
        reported.last_seen += Duration::from_secs(1);
        assert!(merge(base.uid, Some(Prints::of(&base)), &reported, None).is_ok());
    }

    #[test]
    fn without_a_base_a_desired_difference_is_a_conflict() {
        let base = record();
        let mut mine = base.clone();
        mine.desired.remote_config = Some(config(1));
        assert!(matches!(
            merge(base.uid, None, &mine, Some(&base)),
            Err(SaveConflict::DesiredStateChanged { .. })
        ));
        assert!(merge(base.uid, None, &base, Some(&base)).is_ok());
    }
}
