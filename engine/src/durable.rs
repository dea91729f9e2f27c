//! Durable file writes: the only way berth persists a file outside the state db.
//!
//! `write_atomic` writes to a temporary file in the same directory, fsyncs it, renames it
//! over the target and fsyncs the directory, so that a reader (or berth after a crash) sees
//! either the old contents or the new, never a truncated mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoContext, IoError};

/// Atomically replaces `path` with `bytes` (mode 0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .at("create", &tmp)?;
        f.write_all(bytes).at("write", &tmp)?;
        f.sync_all().at("fsync", &tmp)?;
        fs::rename(&tmp, path).at("rename into place", path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory so that a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync dir", dir)
}

/// Creates a directory and its parents with the given mode for the directories it creates.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), IoError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .at("create dir", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind");
    }

    #[test]
    fn write_atomic_names_the_path_on_error() {
        let err = write_atomic(Path::new("/nonexistent-berth-dir/x"), b"x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-berth-dir"), "{err}");
    }
}
