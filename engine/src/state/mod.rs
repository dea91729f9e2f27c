//! The state db: berth's single source of truth (redb, `<root>/state.redb`).
//!
//! This module owns every table and every transaction; nothing else opens the database.
//! Transactions are short: no file I/O, network I/O or awaiting inside a write transaction.
//! The layout is documented in [`schema`]; migrations live in `migrate.rs`.

pub mod records;
pub mod schema;

mod migrate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::error::ErrorKind;
use records::{ImageRecord, SnapshotRecord};
use schema::{
    CONTAINERS, IMAGES, META, META_SCHEMA_VERSION, META_WRITTEN_BY, NODE, PODS, SCHEMA_VERSION,
    SNAPSHOTS, TAGS,
};

use crate::id::Digest;

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
    #[error("{0}")]
    Unavailable(String),
}

impl StateError {
    fn db(e: impl std::fmt::Display) -> Self {
        StateError::Db(e.to_string())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::TooNew { .. } => ErrorKind::FailedPrecondition,
            StateError::Unavailable(_) => ErrorKind::Unavailable,
            // ENOSPC: the node's disk is full, not a fault of berth's.
            StateError::Db(m) if m.contains("os error 28") => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Internal,
        }
    }
}

/// Handle to the open state db.
///
/// After an I/O error (a full disk, above all) redb refuses every further write on that
/// handle ("Previous I/O error occurred"). berth then reopens the file itself, on the
/// next call that finds the handle in that state: the file is intact (a failed commit
/// never lands), so reads work again at once, and writes as soon as space is back. Until
/// a write succeeds, [`StateDb::write_failure`] says why, for Status and the log.
pub struct StateDb {
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
    /// The I/O failure of the last write, until a write succeeds again.
    failure: std::sync::Mutex<Option<String>>,
    /// Pod and container records as decoded, beside the db: kubelet lists them every
    /// second, and decoding every record each time (JSON, launch specs) was most of a
    /// list's cost at a few hundred containers.
    pods: RecordCache<records::PodRecord>,
    containers: RecordCache<records::ContainerRecord>,
}

/// Decoded records of one table, filled from the db at the first list and kept equal to
/// it: every write goes through [`StateDb`]'s put and remove, which update the cache after
/// their commit while holding `writing` (so two writes of one key cannot land in the db and
/// the cache in different orders); readers take only `map`, never waiting for a commit.
#[derive(Debug)]
struct RecordCache<T> {
    map: std::sync::RwLock<Option<std::collections::BTreeMap<String, Arc<T>>>>,
    writing: std::sync::Mutex<()>,
}

impl<T> Default for RecordCache<T> {
    fn default() -> Self {
        RecordCache {
            map: std::sync::RwLock::new(None),
            writing: std::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

/// Whether a handle refuses writes for good after an I/O error.
fn poisoned(db: &Database) -> bool {
    matches!(
        db.begin_write(),
        Err(redb::TransactionError::Storage(
            redb::StorageError::PreviousIo
        ))
    )
}

/// The state db's page cache.
const STATE_CACHE_BYTES: usize = 4 << 20;

impl StateDb {
    /// Opens (creating if needed) the db at `path` and migrates it to [`SCHEMA_VERSION`].
    /// A db written by a newer berth is refused and left untouched.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        // The db is small (records of images, pods and containers): a few MiB of page cache
        // hold all of it, where redb's default (1 GiB) lets the cache grow with every write.
        let db = redb::Builder::new()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(path)
            .map_err(|e| StateError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let state = StateDb {
            db: std::sync::RwLock::new(Some(db)),
            path: path.to_owned(),
            failure: std::sync::Mutex::new(None),
            pods: RecordCache::default(),
            containers: RecordCache::default(),
        };
        state.migrate()?;
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why writes failed last, while they do (a full disk, an I/O error).
    pub fn write_failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|g| g.clone())
    }

    /// Runs `f` on the db. When it fails and the handle is poisoned by an I/O error, the
    /// db is reopened and `f` tried once more.
    fn with_db<T>(
        &self,
        write: bool,
        f: impl Fn(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let first = {
            let g = self
                .db
                .read()
                .map_err(|_| StateError::db("lock poisoned"))?;
            match g.as_ref() {
                Some(db) => match f(db) {
                    Ok(v) => {
                        if write {
                            self.clear_failure();
                        }
                        return Ok(v);
                    }
                    Err(e) if !poisoned(db) => return Err(e),
                    Err(e) => Some(e),
                },
                None => None,
            }
        };
        if let Some(e) = &first {
            self.note_failure(&e.to_string());
        }
        self.reopen()?;
        let g = self
            .db
            .read()
            .map_err(|_| StateError::db("lock poisoned"))?;
        let db = g.as_ref().ok_or_else(|| self.unavailable())?;
        let r = f(db);
        match &r {
            Ok(_) if write => self.clear_failure(),
            Err(e) if write => self.note_failure(&e.to_string()),
            _ => {}
        }
        r
    }

    fn note_failure(&self, why: &str) {
        if let Ok(mut g) = self.failure.lock() {
            if g.is_none() {
                tracing::error!(db = %self.path.display(), error = %why, "state db write failed; berth reopens the db and keeps serving reads; writes resume when the cause (e.g. a full disk) is gone");
            }
            *g = Some(why.to_owned());
        }
    }

    fn clear_failure(&self) {
        if let Ok(mut g) = self.failure.lock()
            && g.take().is_some()
        {
            tracing::info!(db = %self.path.display(), "state db writes work again");
        }
    }

    fn unavailable(&self) -> StateError {
        StateError::Unavailable(format!(
            "state db {} cannot be opened again after an I/O error ({}); berth retries on each call",
            self.path.display(),
            self.write_failure().unwrap_or_default()
        ))
    }

    /// Closes the poisoned handle (the file lock goes with it) and opens the file again.
    fn reopen(&self) -> Result<(), StateError> {
        let mut g = self
            .db
            .write()
            .map_err(|_| StateError::db("lock poisoned"))?;
        if let Some(db) = g.as_ref()
            && !poisoned(db)
        {
            return Ok(()); // another caller reopened it meanwhile
        }
        *g = None;
        match redb::Builder::new()
            .set_cache_size(STATE_CACHE_BYTES)
            .create(&self.path)
        {
            Ok(db) => {
                tracing::warn!(db = %self.path.display(), "state db reopened after an I/O error");
                *g = Some(db);
                Ok(())
            }
            Err(e) => {
                self.note_failure(&e.to_string());
                Err(self.unavailable())
            }
        }
    }

    /// The schema version stored in the db (0 for a new file).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
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
        })
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
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
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
        })
    }

    /// Reads a node-level setting.
    pub fn node_get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let table = txn.open_table(NODE).map_err(StateError::db)?;
            Ok(table
                .get(key)
                .map_err(StateError::db)?
                .map(|v| v.value().to_owned()))
        })
    }

    /// Writes a node-level setting (durable when this returns).
    pub fn node_set(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut table = txn.open_table(NODE).map_err(StateError::db)?;
                table.insert(key, value).map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)
        })
    }

    /// Counts of rows per table, for verbose status.
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let mut out = Vec::new();
            for (name, len) in [
                ("meta", txn.open_table(META).map_err(StateError::db)?.len()),
                ("node", txn.open_table(NODE).map_err(StateError::db)?.len()),
                (
                    "images",
                    txn.open_table(IMAGES).map_err(StateError::db)?.len(),
                ),
                ("tags", txn.open_table(TAGS).map_err(StateError::db)?.len()),
                (
                    "snapshots",
                    txn.open_table(SNAPSHOTS).map_err(StateError::db)?.len(),
                ),
                ("pods", txn.open_table(PODS).map_err(StateError::db)?.len()),
                (
                    "containers",
                    txn.open_table(CONTAINERS).map_err(StateError::db)?.len(),
                ),
            ] {
                out.push((name.to_owned(), len.map_err(StateError::db)?));
            }
            Ok(out)
        })
    }

    /// An image record by id.
    pub fn image_get(&self, id: &Digest) -> Result<Option<ImageRecord>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(IMAGES).map_err(StateError::db)?;
            t.get(id.as_str())
                .map_err(StateError::db)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    /// Every image record.
    pub fn image_list(&self) -> Result<Vec<ImageRecord>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(IMAGES).map_err(StateError::db)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(StateError::db)? {
                let (_, v) = row.map_err(StateError::db)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
    }

    /// The image a `registry/repo:tag` name points to.
    pub fn tag_get(&self, name: &str) -> Result<Option<Digest>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(TAGS).map_err(StateError::db)?;
            match t.get(name).map_err(StateError::db)? {
                None => Ok(None),
                Some(v) => v
                    .value()
                    .parse()
                    .map(Some)
                    .map_err(|e: crate::id::BadDigest| StateError::Db(e.to_string())),
            }
        })
    }

    /// Stores a pulled image in one transaction: merges it with an existing record of the
    /// same id, points each of its tags at it, and takes those tags away from any other
    /// image (which keeps its other names, or none).
    pub fn image_put(&self, rec: ImageRecord) -> Result<ImageRecord, StateError> {
        self.with_db(true, |db| {
            let mut rec = rec.clone();
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut images = txn.open_table(IMAGES).map_err(StateError::db)?;
                let mut tags = txn.open_table(TAGS).map_err(StateError::db)?;
                let existing: Option<ImageRecord> = images
                    .get(rec.id.as_str())
                    .map_err(StateError::db)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                if let Some(old) = existing {
                    for t in old.repo_tags {
                        if !rec.repo_tags.contains(&t) {
                            rec.repo_tags.push(t);
                        }
                    }
                    for d in old.repo_digests {
                        if !rec.repo_digests.contains(&d) {
                            rec.repo_digests.push(d);
                        }
                    }
                }
                for tag in rec.repo_tags.clone() {
                    let previous = tags
                        .insert(tag.as_str(), rec.id.as_str())
                        .map_err(StateError::db)?
                        .map(|v| v.value().to_owned());
                    if let Some(prev) = previous.filter(|p| p != rec.id.as_str()) {
                        let other: Option<ImageRecord> = images
                            .get(prev.as_str())
                            .map_err(StateError::db)?
                            .map(|v| decode(v.value()))
                            .transpose()?;
                        if let Some(mut other) = other {
                            other.repo_tags.retain(|t| t != &tag);
                            images
                                .insert(prev.as_str(), encode(&other)?.as_slice())
                                .map_err(StateError::db)?;
                        }
                    }
                }
                rec.repo_tags.sort();
                rec.repo_digests.sort();
                images
                    .insert(rec.id.as_str(), encode(&rec)?.as_slice())
                    .map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)?;
            Ok(rec)
        })
    }

    /// Removes an image record and its tags; returns what was removed.
    pub fn image_remove(&self, id: &Digest) -> Result<Option<ImageRecord>, StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            let removed = {
                let mut images = txn.open_table(IMAGES).map_err(StateError::db)?;
                let mut tags = txn.open_table(TAGS).map_err(StateError::db)?;
                let rec: Option<ImageRecord> = images
                    .remove(id.as_str())
                    .map_err(StateError::db)?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                if let Some(r) = &rec {
                    for t in &r.repo_tags {
                        let points_here = tags
                            .get(t.as_str())
                            .map_err(StateError::db)?
                            .is_some_and(|v| v.value() == id.as_str());
                        if points_here {
                            tags.remove(t.as_str()).map_err(StateError::db)?;
                        }
                    }
                }
                rec
            };
            txn.commit().map_err(StateError::db)?;
            Ok(removed)
        })
    }

    /// Records an unpacked layer.
    pub fn snapshot_put(&self, rec: &SnapshotRecord) -> Result<(), StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut t = txn.open_table(SNAPSHOTS).map_err(StateError::db)?;
                t.insert(rec.chain_id.as_str(), encode(rec)?.as_slice())
                    .map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)
        })
    }

    pub fn snapshot_get(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(SNAPSHOTS).map_err(StateError::db)?;
            t.get(chain_id.as_str())
                .map_err(StateError::db)?
                .map(|v| decode(v.value()))
                .transpose()
        })
    }

    pub fn snapshot_list(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(SNAPSHOTS).map_err(StateError::db)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(StateError::db)? {
                let (_, v) = row.map_err(StateError::db)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
    }

    pub fn snapshot_remove(&self, chain_id: &Digest) -> Result<(), StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut t = txn.open_table(SNAPSHOTS).map_err(StateError::db)?;
                t.remove(chain_id.as_str()).map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)
        })
    }

    fn json_list<T: serde::de::DeserializeOwned>(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StateError> {
        self.with_db(false, |db| {
            let txn = db.begin_read().map_err(StateError::db)?;
            let t = txn.open_table(table).map_err(StateError::db)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(StateError::db)? {
                let (_, v) = row.map_err(StateError::db)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
    }

    fn json_put<T: serde::Serialize>(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
        key: &str,
        v: &T,
    ) -> Result<(), StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut t = txn.open_table(table).map_err(StateError::db)?;
                t.insert(key, encode(v)?.as_slice())
                    .map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)
        })
    }

    fn json_remove(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<(), StateError> {
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(StateError::db)?;
            {
                let mut t = txn.open_table(table).map_err(StateError::db)?;
                t.remove(key).map_err(StateError::db)?;
            }
            txn.commit().map_err(StateError::db)
        })
    }

    /// The cached records of `table`, loaded from the db the first time.
    fn cached<T, R>(
        &self,
        cache: &RecordCache<T>,
        table: redb::TableDefinition<&str, &[u8]>,
        id_of: impl Fn(&T) -> String,
        read: impl FnOnce(&std::collections::BTreeMap<String, Arc<T>>) -> R,
    ) -> Result<R, StateError>
    where
        T: serde::de::DeserializeOwned,
    {
        {
            let g = cache
                .map
                .read()
                .map_err(|_| StateError::db("lock poisoned"))?;
            if let Some(m) = g.as_ref() {
                return Ok(read(m));
            }
        }
        // Loaded under `writing`, so that no write lands between the read and the fill.
        let _w = cache
            .writing
            .lock()
            .map_err(|_| StateError::db("lock poisoned"))?;
        let mut g = cache
            .map
            .write()
            .map_err(|_| StateError::db("lock poisoned"))?;
        if g.is_none() {
            let all: Vec<T> = self.json_list(table)?;
            *g = Some(all.into_iter().map(|r| (id_of(&r), Arc::new(r))).collect());
        }
        Ok(read(g.as_ref().unwrap_or(&Default::default())))
    }

    /// Writes (Some) or removes (None) a record in the db, then in the cache.
    fn cached_write<T>(
        &self,
        cache: &RecordCache<T>,
        table: redb::TableDefinition<&str, &[u8]>,
        key: &str,
        v: Option<&T>,
    ) -> Result<(), StateError>
    where
        T: serde::Serialize + Clone,
    {
        let _w = cache
            .writing
            .lock()
            .map_err(|_| StateError::db("lock poisoned"))?;
        match v {
            Some(v) => self.json_put(table, key, v)?,
            None => self.json_remove(table, key)?,
        }
        let mut g = cache
            .map
            .write()
            .map_err(|_| StateError::db("lock poisoned"))?;
        if let Some(m) = g.as_mut() {
            match v {
                Some(v) => {
                    m.insert(key.to_owned(), Arc::new(v.clone()));
                }
                None => {
                    m.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Pod `id`'s record, shared with the cache (not copied).
    pub fn pod_shared(&self, id: &str) -> Result<Option<Arc<records::PodRecord>>, StateError> {
        self.cached(&self.pods, PODS, |p| p.id.clone(), |m| m.get(id).cloned())
    }

    pub fn pod_get(&self, id: &str) -> Result<Option<records::PodRecord>, StateError> {
        self.cached(
            &self.pods,
            PODS,
            |p| p.id.clone(),
            |m| m.get(id).map(|p| p.as_ref().clone()),
        )
    }

    /// Every pod record, shared with the cache (a list copies pointers, not records).
    pub fn pod_list(&self) -> Result<Vec<Arc<records::PodRecord>>, StateError> {
        self.cached(
            &self.pods,
            PODS,
            |p| p.id.clone(),
            |m| m.values().cloned().collect(),
        )
    }

    pub fn pod_put(&self, p: &records::PodRecord) -> Result<(), StateError> {
        self.cached_write(&self.pods, PODS, &p.id, Some(p))
    }

    pub fn pod_remove(&self, id: &str) -> Result<(), StateError> {
        self.cached_write::<records::PodRecord>(&self.pods, PODS, id, None)
    }

    pub fn container_get(&self, id: &str) -> Result<Option<records::ContainerRecord>, StateError> {
        self.cached(
            &self.containers,
            CONTAINERS,
            |c| c.id.clone(),
            |m| m.get(id).map(|c| c.as_ref().clone()),
        )
    }

    /// Container `id`'s record, shared with the cache (not copied: what a probe reads).
    pub fn container_shared(
        &self,
        id: &str,
    ) -> Result<Option<Arc<records::ContainerRecord>>, StateError> {
        self.cached(
            &self.containers,
            CONTAINERS,
            |c| c.id.clone(),
            |m| m.get(id).cloned(),
        )
    }

    /// Every container record, shared with the cache (a list copies pointers, not records).
    pub fn container_list(&self) -> Result<Vec<Arc<records::ContainerRecord>>, StateError> {
        self.cached(
            &self.containers,
            CONTAINERS,
            |c| c.id.clone(),
            |m| m.values().cloned().collect(),
        )
    }

    pub fn container_put(&self, c: &records::ContainerRecord) -> Result<(), StateError> {
        self.cached_write(&self.containers, CONTAINERS, &c.id, Some(c))
    }

    pub fn container_remove(&self, id: &str) -> Result<(), StateError> {
        self.cached_write::<records::ContainerRecord>(&self.containers, CONTAINERS, id, None)
    }

    /// Sets the stored schema version; only for tests of the too-new refusal.
    #[cfg(test)]
    fn force_version(&self, v: u32) {
        self.with_db(true, |db| {
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_SCHEMA_VERSION, v.to_le_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
            Ok(())
        })
        .unwrap()
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(v).map_err(|e| StateError::Db(format!("encode record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(b).map_err(|e| StateError::Db(format!("decode record: {e}")))
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

    fn image(n: u8, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            schema_version: records::RECORD_VERSION,
            id: Digest::of(&[n]),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![],
            index_digest: None,
            manifest_digest: Digest::of(&[n, 1]),
            manifest_media_type: String::new(),
            manifest_size: 1,
            config_size: 1,
            layers: vec![],
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            config: Default::default(),
            pulled_at: 0,
        }
    }

    #[test]
    fn a_tag_moves_to_the_newest_image() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.redb")).unwrap();
        db.image_put(image(1, &["r/a:latest", "r/a:v1"])).unwrap();
        db.image_put(image(2, &["r/a:latest"])).unwrap();
        assert_eq!(db.tag_get("r/a:latest").unwrap(), Some(Digest::of(&[2])));
        assert_eq!(
            db.image_get(&Digest::of(&[1])).unwrap().unwrap().repo_tags,
            vec!["r/a:v1"]
        );
        // Pulling the same image under another tag merges names.
        let merged = db.image_put(image(2, &["r/b:x"])).unwrap();
        assert_eq!(merged.repo_tags, vec!["r/a:latest", "r/b:x"]);
        let removed = db.image_remove(&Digest::of(&[2])).unwrap().unwrap();
        assert_eq!(removed.repo_tags.len(), 2);
        assert_eq!(db.tag_get("r/a:latest").unwrap(), None);
        assert_eq!(db.tag_get("r/a:v1").unwrap(), Some(Digest::of(&[1])));
        assert_eq!(db.image_list().unwrap().len(), 1);
    }

    #[test]
    fn v1_db_migrates_to_current() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        StateDb::open(&p).unwrap().force_version(1);
        let db = StateDb::open(&p).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        assert!(db.image_list().unwrap().is_empty());
    }

    #[test]
    fn v3_records_are_rewritten_as_version_2_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.redb");
        {
            let db = StateDb::open(&p).unwrap();
            db.force_version(3);
            let g = db.db.read().unwrap();
            let txn = g.as_ref().unwrap().begin_write().unwrap();
            {
                let mut t = txn.open_table(CONTAINERS).unwrap();
                let old = serde_json::to_vec(&records::version_1_container()).unwrap();
                t.insert("c1", old.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = StateDb::open(&p).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let c = db.container_get("c1").unwrap().unwrap();
        assert_eq!(c.schema_version, records::RECORD_VERSION);
        assert_eq!(c.launch.process.args, vec!["sleep", "1000"]);
        // Stored in the new form.
        let g = db.db.read().unwrap();
        let txn = g.as_ref().unwrap().begin_read().unwrap();
        let t = txn.open_table(CONTAINERS).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(t.get("c1").unwrap().unwrap().value()).unwrap();
        assert!(raw["launch"].is_string(), "{raw}");
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
