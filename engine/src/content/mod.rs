//! The content store: blobs (manifests, indexes, configs, layers) addressed by digest.
//!
//! ```text
//! <root>/content/
//! ├── blobs/sha256/<hex>     committed blobs: verified, fsynced, read-only to everyone else
//! └── ingest/<ref>/data      writes in progress; never read by anyone but their writer
//! ```
//!
//! Invariant: a blob is visible under its digest only after its size and digest were
//! checked. A write streams into `ingest/`, hashing as it goes, and is refused as soon as it
//! exceeds the size its descriptor announced; `commit` checks the size and digest, fsyncs,
//! and renames it into `blobs/`. A writer dropped without commit removes its ingest, and
//! `open` removes whatever a crash left in `ingest/`. "Already exists" is a normal outcome.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;

use crate::durable;
use crate::error::{ErrorKind, IoContext, IoError};
use crate::id::Digest;

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("blob {digest}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {expected}: digest mismatch: the content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: more than {limit} bytes")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("blob {0} not found in the content store")]
    NotFound(Digest),
}

impl ContentError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContentError::Io(_) => ErrorKind::Internal,
            ContentError::SizeMismatch { .. }
            | ContentError::DigestMismatch { .. }
            | ContentError::TooLarge { .. } => ErrorKind::DataLoss,
            ContentError::NotFound(_) => ErrorKind::NotFound,
        }
    }
}

/// The content store on disk.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    next_ingest: AtomicU64,
}

impl ContentStore {
    /// Opens the store at `root` (`<root>/content`), creating it, and removes ingests left
    /// by a crash.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        durable::create_dir_all(&root.join("blobs/sha256"), 0o700)?;
        let ingest = root.join("ingest");
        if ingest.exists() {
            for e in fs::read_dir(&ingest).at("read dir", &ingest)?.flatten() {
                tracing::info!(path = %e.path().display(), "removing unfinished ingest");
                fs::remove_dir_all(e.path()).at("remove", e.path())?;
            }
        }
        durable::create_dir_all(&ingest, 0o700)?;
        Ok(ContentStore {
            root: root.to_owned(),
            next_ingest: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a committed blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The size of a committed blob, or None.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }

    pub fn exists(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a whole blob, refusing one larger than `limit`.
    pub fn read(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let p = self.blob_path(d);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(d.clone()));
            }
            Err(e) => return Err(Err(e).at("open", &p)?),
        };
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf).at("read", &p)?;
        if buf.len() as u64 > limit {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                limit,
            });
        }
        Ok(buf)
    }

    /// Opens a committed blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File, ContentError> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ContentError::NotFound(d.clone())
            } else {
                ContentError::Io(IoError {
                    op: "open",
                    path: p,
                    source: e,
                })
            }
        })
    }

    /// Starts writing a blob that must hash to `expected` and, when given, be exactly
    /// `size` bytes (never more than `limit`).
    pub fn writer(
        &self,
        expected: &Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Ingest<'_>, ContentError> {
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let dir =
            self.root
                .join("ingest")
                .join(format!("{}-{}-{n}", expected.hex(), std::process::id()));
        durable::create_dir_all(&dir, 0o700)?;
        let path = dir.join("data");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("create", &path)?;
        Ok(Ingest {
            store: self,
            dir,
            path,
            file: Some(file),
            hasher: sha2::Sha256::new(),
            written: 0,
            expected: expected.clone(),
            size,
            limit: size.map_or(limit, |s| s.min(limit)),
            committed: false,
        })
    }

    /// Writes a whole blob (manifests, configs) through an ingest; a blob that exists
    /// already is left as it is.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        if self.exists(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, Some(bytes.len() as u64), bytes.len() as u64)?;
        w.write_chunk(bytes)?;
        w.commit()
    }

    /// Writes a blob whose digest is only known from its content (a `docker save` layer or
    /// config, named by a legacy id): hashed as it streams in, never more than `limit`
    /// bytes, fsynced and made visible under the digest it has. Returns the digest and size.
    /// `before_visible` is told the digest before the blob appears (to lease it).
    pub fn put_reader(
        &self,
        r: &mut impl Read,
        limit: u64,
        before_visible: impl FnOnce(&Digest),
    ) -> Result<(Digest, u64), ContentError> {
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join("ingest")
            .join(format!("unnamed-{}-{n}", std::process::id()));
        durable::create_dir_all(&dir, 0o700)?;
        let cleanup = Cleanup(&dir);
        let path = dir.join("data");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("create", &path)?;
        let mut hasher = sha2::Sha256::new();
        let mut written = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let got = r.read(&mut buf).at("read", &path)?;
            if got == 0 {
                break;
            }
            written += got as u64;
            if written > limit {
                let actual = Digest::from_sha256(hasher.finalize().into());
                return Err(ContentError::TooLarge {
                    digest: actual,
                    limit,
                });
            }
            hasher.update(&buf[..got]);
            file.write_all(&buf[..got]).at("write", &path)?;
        }
        let digest = Digest::from_sha256(hasher.finalize().into());
        before_visible(&digest);
        if !self.exists(&digest) {
            file.sync_all().at("fsync", &path)?;
            let target = self.blob_path(&digest);
            fs::rename(&path, &target).at("commit blob", &target)?;
            durable::fsync_dir(target.parent().unwrap_or(Path::new("/")))?;
        }
        drop(cleanup);
        Ok((digest, written))
    }

    /// Removes a blob; a missing one is not an error.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        let p = self.blob_path(d);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Err(e).at("remove", &p)?),
        }
    }

    /// Every committed blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at("read dir", &dir)?.flatten() {
            let name = e.file_name();
            let Ok(d) = format!("sha256:{}", name.to_string_lossy()).parse::<Digest>() else {
                continue;
            };
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, len));
        }
        Ok(out)
    }
}

/// Removes an ingest directory when dropped.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0);
    }
}

/// A blob being written. Dropped without [`Ingest::commit`], it removes itself.
#[derive(Debug)]
pub struct Ingest<'a> {
    store: &'a ContentStore,
    dir: PathBuf,
    path: PathBuf,
    file: Option<File>,
    hasher: sha2::Sha256,
    written: u64,
    expected: Digest,
    size: Option<u64>,
    limit: u64,
    committed: bool,
}

impl Ingest<'_> {
    /// Appends bytes, refusing any beyond the announced size.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), ContentError> {
        let after = self.written + chunk.len() as u64;
        if after > self.limit {
            return Err(match self.size {
                Some(expected) if after > expected => ContentError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected,
                    actual: after,
                },
                _ => ContentError::TooLarge {
                    digest: self.expected.clone(),
                    limit: self.limit,
                },
            });
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).at("write", &self.path)?;
        }
        self.hasher.update(chunk);
        self.written = after;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, fsyncs and makes the blob visible. A blob that another
    /// writer committed meanwhile is fine: the content is the same by definition.
    pub fn commit(mut self) -> Result<(), ContentError> {
        if let Some(expected) = self.size
            && self.written != expected
        {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected,
                actual: self.written,
            });
        }
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        if let Some(f) = self.file.take() {
            f.sync_all().at("fsync", &self.path)?;
        }
        let target = self.store.blob_path(&self.expected);
        fs::rename(&self.path, &target).at("commit blob", &target)?;
        durable::fsync_dir(target.parent().unwrap_or(Path::new("/")))?;
        self.committed = true;
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let t = tempfile::tempdir().unwrap();
        let s = ContentStore::open(&t.path().join("content")).unwrap();
        (t, s)
    }

    fn ingest_is_empty(s: &ContentStore) -> bool {
        fs::read_dir(s.root().join("ingest"))
            .unwrap()
            .next()
            .is_none()
    }

    #[test]
    fn verified_blob_becomes_visible() {
        let (_t, s) = store();
        let d = Digest::of(b"hello");
        let mut w = s.writer(&d, Some(5), 1 << 20).unwrap();
        w.write_chunk(b"hel").unwrap();
        assert!(!s.exists(&d), "visible before commit");
        w.write_chunk(b"lo").unwrap();
        w.commit().unwrap();
        assert_eq!(s.read(&d, 100).unwrap(), b"hello");
        assert!(ingest_is_empty(&s));
        s.put(&d, b"hello").unwrap();
        assert_eq!(s.list().unwrap(), vec![(d, 5)]);
    }

    #[test]
    fn wrong_digest_or_size_leaves_nothing() {
        let (_t, s) = store();
        let d = Digest::of(b"hello");
        let mut w = s.writer(&d, Some(5), 1 << 20).unwrap();
        w.write_chunk(b"hellx").unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, ContentError::DigestMismatch { .. }));
        assert_eq!(e.kind(), ErrorKind::DataLoss);
        assert!(!s.exists(&d));
        assert!(ingest_is_empty(&s));

        let mut w = s.writer(&d, Some(5), 1 << 20).unwrap();
        let e = w.write_chunk(b"hello, world").unwrap_err();
        assert!(matches!(e, ContentError::SizeMismatch { .. }), "{e}");
        drop(w);
        assert!(ingest_is_empty(&s));

        let mut w = s.writer(&d, Some(5), 1 << 20).unwrap();
        w.write_chunk(b"hel").unwrap();
        assert!(matches!(
            w.commit().unwrap_err(),
            ContentError::SizeMismatch { .. }
        ));
        assert!(!s.exists(&d));
    }

    #[test]
    fn reads_are_bounded_and_crash_leftovers_removed() {
        let (t, s) = store();
        let d = Digest::of(b"0123456789");
        s.put(&d, b"0123456789").unwrap();
        assert!(matches!(s.read(&d, 5), Err(ContentError::TooLarge { .. })));
        assert!(matches!(
            s.read(&Digest::of(b"x"), 5),
            Err(ContentError::NotFound(_))
        ));
        let stale = t.path().join("content/ingest/abc-1-0");
        fs::create_dir_all(&stale).unwrap();
        fs::write(stale.join("data"), b"partial").unwrap();
        let s = ContentStore::open(&t.path().join("content")).unwrap();
        assert!(ingest_is_empty(&s));
        assert!(s.exists(&d));
    }
}
