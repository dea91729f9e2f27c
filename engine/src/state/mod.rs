//! The state db: berth's single source of truth (redb, `<root>/state.redb`).
//!
//! This module owns every table and every transaction; nothing else opens the database.
//! Transactions are short: no file I/O, network I/O or awaiting inside a write transaction.
//! The layout is documented in [`schema`]; migrations live in `migrate.rs`.

pub mod schema;

mod migrate;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTableMetadata};

use crate::error::ErrorKind;
use schema::{META, META_SCHEMA_VERSION, META_WRITTEN_BY, NODE, SCHEMA_VERSION};

/// Errors of the state db.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state db {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "state db {path} has schema version {found}, newer than this berth understands ({supported}); run the berth version that wrote it, or move the root aside"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("state db {path}: schema_version record is corrupt ({len} bytes)")]
    CorruptVersion { path: PathBuf, len: usize },
    #[error("state db: {0}")]
    Db(String),
}

impl StateError {
    fn db(e: impl std::fmt::Display) -> Self {
        StateError::Db(e.to_string())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::TooNew { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

/// Handle to the open state db.
pub struct StateDb {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

impl StateDb {
    /// Opens (creating if needed) the db at `path` and migrates it to [`SCHEMA_VERSION`].
    /// A db written by a newer berth is refused and left untouched.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = Database::create(path).map_err(|e| StateError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let state = StateDb {
            db,
            path: path.to_owned(),
        };
        state.migrate()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version stored in the db (0 for a new file).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        let txn = self.db.begin_read().map_err(StateError::db)?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(StateError::db(e)),
        };
        let value = table.get(META_SCHEMA_VERSION).map_err(StateError::db)?;
        match value {
            None => Ok(0),
            Some(v) => decode_version(&self.path, v.value()),
        }
    }

    fn migrate(&self) -> Result<(), StateError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(StateError::db)?;
        for (from, step) in migrate::STEPS.iter().enumerate().skip(found as usize) {
            tracing::info!(from, to = from + 1, db = %self.path.display(), "migrating state db");
            step(&txn)?;
        }
        {
            let mut meta = txn.open_table(META).map_err(StateError::db)?;
            meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(StateError::db)?;
            meta.insert(
                META_WRITTEN_BY,
                concat!("berth ", env!("CARGO_PKG_VERSION")).as_bytes(),
            )
            .map_err(StateError::db)?;
        }
        txn.commit().map_err(StateError::db)?;
        Ok(())
    }

    /// Reads a node-level setting.
    pub fn node_get(&self, key: &str) -> Result<Option<String>, StateError> {
        let txn = self.db.begin_read().map_err(StateError::db)?;
        let table = txn.open_table(NODE).map_err(StateError::db)?;
        Ok(table
            .get(key)
            .map_err(StateError::db)?
            .map(|v| v.value().to_owned()))
    }

    /// Writes a node-level setting (durable when this returns).
    pub fn node_set(&self, key: &str, value: &str) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(StateError::db)?;
        {
            let mut table = txn.open_table(NODE).map_err(StateError::db)?;
            table.insert(key, value).map_err(StateError::db)?;
        }
        txn.commit().map_err(StateError::db)
    }

    /// Counts of rows per table, for verbose status.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>, StateError> {
        let txn = self.db.begin_read().map_err(StateError::db)?;
        let mut out = Vec::new();
        for (name, len) in [
            ("meta", txn.open_table(META).map_err(StateError::db)?.len()),
            ("node", txn.open_table(NODE).map_err(StateError::db)?.len()),
        ] {
            out.push((name.to_owned(), len.map_err(StateError::db)?));
        }
        Ok(out)
    }

    /// Sets the stored schema version; only for tests of the too-new refusal.
    #[cfg(test)]
    fn force_version(&self, v: u32) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA_VERSION, v.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
}

fn decode_version(path: &Path, bytes: &[u8]) -> Result<u32, StateError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StateError::CorruptVersion {
        path: path.to_owned(),
        len: bytes.len(),
    })?;
    Ok(u32::from_le_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_db_gets_current_version_and_keeps_settings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        {
            let db = StateDb::open(&p).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            db.node_set(schema::NODE_POD_CIDR, "10.88.0.0/16").unwrap();
        }
        let db = StateDb::open(&p).unwrap();
        assert_eq!(
            db.node_get(schema::NODE_POD_CIDR).unwrap().as_deref(),
            Some("10.88.0.0/16")
        );
    }

    #[test]
    fn newer_db_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        StateDb::open(&p).unwrap().force_version(SCHEMA_VERSION + 1);
        let err = StateDb::open(&p).unwrap_err();
        assert!(matches!(err, StateError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer than this berth"), "{err}");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }
}
