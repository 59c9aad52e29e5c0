//! Records in an embedded database (redb): one file in the data dir, ACID
//! transactions, crash-safe, pure Rust. One redb table per record table,
//! keyed by id, values JSON.
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, TableHandle};

use super::{RecordStore, RecordWrite, StoreError};

pub struct RedbRecords {
    db: Database,
}

fn db_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into().to_string())
}

impl RedbRecords {
    /// Opens or creates the database; fails if another process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_error)?;
        Ok(Self { db })
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl RecordStore for RedbRecords {
    fn write_records(&self, writes: &[RecordWrite], durable: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(db_error)?;
        }
        for w in writes {
            let mut t = txn.open_table(table(w.table)).map_err(db_error)?;
            match w.json {
                Some(json) => {
                    t.insert(w.id, json).map_err(db_error)?;
                }
                None => {
                    t.remove(w.id).map_err(db_error)?;
                }
            }
        }
        txn.commit().map_err(db_error)
    }

    fn get_record(&self, name: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let t = match txn.open_table(table(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_error(e)),
        };
        Ok(t.get(id).map_err(db_error)?.map(|v| v.value().to_vec()))
    }

    fn list_records(&self, name: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let t = match txn.open_table(table(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(e)),
        };
        let mut out = Vec::new();
        for row in t.range(prefix..).map_err(db_error)? {
            let (k, v) = row.map_err(db_error)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn tables(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let tables = txn.list_tables().map_err(db_error)?;
        Ok(tables.map(|t| t.name().to_string()).collect())
    }
}
