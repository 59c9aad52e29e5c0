//! The PostgreSQL schema, as numbered migrations applied in order. Each
//! runs once, in a transaction, under an advisory lock: replicas that start
//! at the same moment apply a migration once and wait for each other.
//! Never edit a released migration; add the next number.
use tokio_postgres::Client;

use super::{with_causes, StoreError};

pub(crate) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "records",
    // Ids sort and match by bytes ("C"), as the embedded store's do, so a
    // prefix scan uses the primary key.
    sql: r#"
        CREATE TABLE lstmd_records (
            tbl  text COLLATE "C" NOT NULL,
            id   text COLLATE "C" NOT NULL,
            json bytea NOT NULL,
            PRIMARY KEY (tbl, id)
        );
    "#,
}];

/// Any number fixed for the whole program will do: it names the lock.
const MIGRATION_LOCK: i64 = 0x6c73_746d_6400_0001;

/// Applies the migrations this database lacks; returns the numbers applied.
/// Refuses a database migrated by a newer lstmd (its schema is unknown
/// here).
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let txn = client.transaction().await.map_err(pg_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    txn.batch_execute(
        "SET LOCAL client_min_messages TO warning;
         CREATE TABLE IF NOT EXISTS lstmd_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(pg_error)?;
    let row = txn
        .query_one(
            "SELECT coalesce(max(version), 0) FROM lstmd_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::Database(format!(
            "the database schema is at version {current}, newer than this lstmd knows \
             ({known}); run a release at least as new"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        txn.batch_execute(m.sql).await.map_err(pg_error)?;
        txn.execute(
            "INSERT INTO lstmd_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(pg_error)?;
        applied.push(m.version);
    }
    txn.commit().await.map_err(pg_error)?;
    Ok(applied)
}

/// A PostgreSQL error as a store error: a lost or refused connection is
/// "unavailable" (retry later), anything else a database failure.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        StoreError::Unavailable(format!("PostgreSQL: {}", with_causes(&e)))
    } else {
        StoreError::Database(format!("PostgreSQL: {}", with_causes(&e)))
    }
}
