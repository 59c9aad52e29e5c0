//! Records in PostgreSQL (`--records postgres://...`): one table of JSON
//! records keyed by (table, id), written in transactions. The schema comes
//! from migrations.rs, applied when the store opens.
use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::bridge::Bridge;
use super::migrations::{migrate, pg_error};
use super::{with_causes, RecordStore, RecordWrite, StoreError};

/// Connections the pool keeps; each bridged call uses one for its query.
const POOL_SIZE: usize = 8;
/// A database that does not answer within this gives UNAVAILABLE.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub struct PgRecords {
    pool: Pool,
    bridge: Bridge,
    tls: MakeRustlsConnect,
}

/// TLS for the connections, used as the URL's `sslmode` says (`prefer`
/// by default: TLS when the server offers it; `require` to insist). The
/// server's certificate is verified against the system's roots and the
/// PEM certificates of `ca_file` (a managed database's own CA).
fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert); // a system root rustls cannot parse
    }
    if let Some(path) = ca_file {
        let bad =
            |e: String| StoreError::Config(format!("--records-ca-file {}: {e}", path.display()));
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    // ring, named here: the process may hold two providers (see the S3
    // client), and a library caller may not have chosen one.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Database(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn pool_error(e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {}", with_causes(&e)))
}

impl PgRecords {
    /// Connects to `url` (`postgres://user:password@host:port/db`, with
    /// `?sslmode=require` for TLS) and applies the migrations the database
    /// lacks; `ca_file` adds CA certificates to verify the server with.
    pub fn open(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let (store, applied) = Self::connect(url, ca_file)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied database migrations");
        }
        Ok(store)
    }

    /// `lstmd migrate`: connects, migrates, and says which migrations ran.
    pub fn connect(url: &str, ca_file: Option<&Path>) -> Result<(Self, Vec<i32>), StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("bad --records URL: {e}")))?;
        let bridge = Bridge::new("PostgreSQL", CALL_TIMEOUT)?;
        let tls = tls(ca_file)?;
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            // The pool's timers belong to the bridge's runtime.
            let _inside = bridge.handle().enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(CALL_TIMEOUT))
                .create_timeout(Some(CALL_TIMEOUT))
                .build()
                .map_err(pool_error)?
        };
        let migrating = pool.clone();
        let applied = bridge.run(async move {
            let mut client = migrating.get().await.map_err(pool_error)?;
            migrate(&mut client).await
        })?;
        Ok((Self { pool, bridge, tls }, applied))
    }
}

/// Names the lock that one replica holds while it runs jobs.
const SOLE_REPLICA_LOCK: i64 = 0x6c73_746d_6400_0002;

impl PgRecords {
    /// Takes the database's sole-replica lock on a connection of its own,
    /// for as long as this process lives: jobs, their queue and version
    /// numbers are still coordinated in one process, so a second replica
    /// on the same database is refused instead of running jobs twice. If
    /// the connection is lost the process exits (a supervisor restarts it
    /// and it waits its turn), since another replica may take the lock.
    pub fn hold_sole_replica_lock(&self, url: &str) -> Result<(), StoreError> {
        let (url, tls) = (url.to_string(), self.tls.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.bridge.handle().spawn(async move {
            let (client, connection) = match tokio_postgres::connect(&url, tls).await {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = tx.send(Err(pg_error(e)));
                    return;
                }
            };
            let held = tokio::spawn(connection);
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&SOLE_REPLICA_LOCK])
                .await;
            let held_lock = row.map(|r| r.get::<_, bool>(0)).map_err(pg_error);
            let keep = matches!(held_lock, Ok(true));
            let _ = tx.send(held_lock);
            if !keep {
                return;
            }
            // Ends only if the connection does (a cancelled task, at
            // shutdown, is not an end of the connection).
            if let Ok(ended) = held.await {
                tracing::error!(
                    ?ended,
                    "lost the database connection that holds the sole-replica lock; exiting"
                );
                std::process::exit(3);
            }
            drop(client);
        });
        let held = rx
            .recv_timeout(CALL_TIMEOUT)
            .map_err(|_| StoreError::Unavailable("PostgreSQL did not answer".into()))??;
        if held {
            Ok(())
        } else {
            Err(StoreError::Database(
                "another lstmd replica runs on this database; this release runs one replica \
                 per database (stop the other, or give this one its own database)"
                    .into(),
            ))
        }
    }
}

/// The schema version this release migrates a database to.
pub fn schema_version() -> i32 {
    super::migrations::MIGRATIONS
        .last()
        .map_or(0, |m| m.version)
}

/// `prefix` as a LIKE pattern that matches it literally at the start.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

struct OwnedWrite {
    table: String,
    id: String,
    json: Option<Vec<u8>>,
}

impl RecordStore for PgRecords {
    fn write_records(&self, writes: &[RecordWrite], durable: bool) -> Result<(), StoreError> {
        let writes: Vec<OwnedWrite> = writes
            .iter()
            .map(|w| OwnedWrite {
                table: w.table.to_string(),
                id: w.id.to_string(),
                json: w.json.map(<[u8]>::to_vec),
            })
            .collect();
        let pool = self.pool.clone();
        self.bridge.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(pg_error)?;
            if !durable {
                // Progress events: committed, but not waited on to disk.
                txn.batch_execute("SET LOCAL synchronous_commit TO OFF")
                    .await
                    .map_err(pg_error)?;
            }
            for w in &writes {
                match &w.json {
                    Some(json) => txn
                        .execute(
                            "INSERT INTO lstmd_records (tbl, id, json) VALUES ($1, $2, $3)
                             ON CONFLICT (tbl, id) DO UPDATE SET json = EXCLUDED.json",
                            &[&w.table, &w.id, json],
                        )
                        .await
                        .map_err(pg_error)?,
                    None => txn
                        .execute(
                            "DELETE FROM lstmd_records WHERE tbl = $1 AND id = $2",
                            &[&w.table, &w.id],
                        )
                        .await
                        .map_err(pg_error)?,
                };
            }
            txn.commit().await.map_err(pg_error)
        })
    }

    fn get_record(&self, table: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (pool, table, id) = (self.pool.clone(), table.to_string(), id.to_string());
        self.bridge.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT json FROM lstmd_records WHERE tbl = $1 AND id = $2",
                    &[&table, &id],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn list_records(
        &self,
        table: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (pool, table, pattern) = (self.pool.clone(), table.to_string(), like_prefix(prefix));
        self.bridge.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT id, json FROM lstmd_records WHERE tbl = $1 AND id LIKE $2
                     ORDER BY id",
                    &[&table, &pattern],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn tables(&self) -> Result<Vec<String>, StoreError> {
        let pool = self.pool.clone();
        self.bridge.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query("SELECT DISTINCT tbl FROM lstmd_records ORDER BY tbl", &[])
                .await
                .map_err(pg_error)?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_itself_literally() {
        assert_eq!(super::like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(super::like_prefix(""), "%");
    }
}
