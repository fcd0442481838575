//! Public error types.

use opamp_proto::InstanceUid;

/// Setting up or running the PostgreSQL backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The database answered with an error, or the connection failed.
    #[error("PostgreSQL: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The connection pool could not be built.
    #[error("building the PostgreSQL connection pool: {0}")]
    BuildPool(String),
    /// The instance name is not usable as a NOTIFY channel suffix.
    #[error(
        "invalid instance name {0:?}: use 1 to 48 ASCII letters, digits, '_' or '-', unique among running instances"
    )]
    InvalidInstanceName(String),
    /// Applying an embedded migration failed; nothing of it was kept.
    #[error("applying schema migration {version}: {source}")]
    Migration {
        /// The migration's version.
        version: i32,
        /// What the database said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database schema is newer than this crate knows; an older binary
    /// must not write to it.
    #[error("database schema is at version {found}, this build knows up to {known}")]
    SchemaTooNew {
        /// The version recorded in `opamp_schema_migrations`.
        found: i32,
        /// The newest embedded migration.
        known: i32,
    },
    /// A stored message could not be decoded.
    #[error("stored message is corrupt: {0}")]
    Corrupt(String),
}

/// Why [`PgStore`](crate::PgStore) refused a save. It reaches the caller
/// inside [`StoreError::Backend`](opamp_server::StoreError::Backend); find
/// it with `downcast_ref::<SaveConflict>()` on the boxed source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaveConflict {
    /// Another writer changed the same part of the desired state since this
    /// instance read the record. Desired state is never overwritten blindly:
    /// load the record again and decide.
    #[error("agent {uid}: desired {part} was changed by another writer since it was read")]
    DesiredStateChanged {
        /// The agent.
        uid: InstanceUid,
        /// `remote_config`, `packages` or `connection_settings`.
        part: &'static str,
    },
    /// This instance wrote what the agent reported, but another instance has
    /// claimed the agent's connection since (a newer epoch): a stale owner
    /// never overwrites.
    #[error(
        "agent {uid}: this instance's claim (epoch {epoch}) is stale, the owner is at epoch {current}"
    )]
    StaleOwner {
        /// The agent.
        uid: InstanceUid,
        /// The epoch this instance holds.
        epoch: i64,
        /// The owner's epoch in the database.
        current: i64,
    },
    /// The record was deleted since it was read, and this save changed only
    /// desired state: it is not brought back.
    #[error("agent {uid}: record was removed by another writer")]
    Removed {
        /// The agent.
        uid: InstanceUid,
    },
    /// Every compare-and-set attempt lost against another writer.
    #[error("agent {uid}: still conflicting after {attempts} attempts")]
    Contended {
        /// The agent.
        uid: InstanceUid,
        /// How many times the save was tried.
        attempts: u32,
    },
}
