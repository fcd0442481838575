//! Embedded, versioned schema migrations.

use tokio_postgres::Client;

use crate::error::PgError;

/// Every migration, in order. Versions are never reused or edited once
/// released: a change is a new file.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "initial", include_str!("../migrations/0001_initial.sql"))];

/// Arbitrary, fixed key of the advisory lock that serialises migrations of
/// instances starting together ("opamp" in ASCII).
const MIGRATION_LOCK: i64 = 0x6f_70_61_6d_70;

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

/// Brings the schema to [`latest_version`]: one transaction, under an
/// advisory lock, so instances starting at once apply each migration
/// exactly once and a failed migration leaves nothing behind.
pub(crate) async fn migrate(client: &mut Client) -> Result<i32, PgError> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS opamp_schema_migrations (
                 version     integer     PRIMARY KEY,
                 name        text        NOT NULL,
                 applied_at  timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let current: i32 = transaction
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM opamp_schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = latest_version();
    if current > known {
        return Err(PgError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        transaction
            .batch_execute(sql)
            .await
            .map_err(|source| PgError::Migration {
                version: *version,
                source,
            })?;
        transaction
            .execute(
                "INSERT INTO opamp_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
        tracing::info!(version, name, "applied schema migration");
    }
    transaction.commit().await?;
    Ok(known)
}
