//! The image API of the engine: pull, status, list, remove, filesystem usage, and the
//! start-up reconciliation of the image store.

use std::path::PathBuf;

use tracing::Instrument;

use super::lease::Leases;
use super::reference::ImageRef;
use super::registry::Credentials;
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::id::Digest;
use crate::snapshots::{self, SnapshotStore, Usage};
use crate::state::StateDb;
use crate::state::records::ImageRecord;
use crate::{Engine, gc};

/// An image as the engine reports it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub pinned: bool,
}

/// Disk usage of one filesystem berth writes to.
#[derive(Debug, Clone)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub usage: Usage,
}

/// Image and container filesystem usage (CRI ImageFsInfo).
#[derive(Debug, Clone)]
pub struct FsInfo {
    pub image: FsUsage,
    pub container: FsUsage,
}

/// Start-up reconciliation: an image whose layers or blobs are missing (a crash, or
/// someone deleting files) is forgotten so that kubelet pulls it again; then everything
/// unreferenced is collected.
pub fn recover(
    db: &StateDb,
    content: &ContentStore,
    snapshots: &SnapshotStore,
    leases: &Leases,
) -> Result<()> {
    for img in db.image_list()? {
        let missing_layer = img.layers.iter().any(|l| !snapshots.exists(&l.chain_id));
        let missing_blob = img.blobs().any(|d| !content.exists(d));
        if missing_layer || missing_blob {
            tracing::warn!(image = %img.id, tags = ?img.repo_tags, "image is incomplete on disk; forgetting it");
            db.image_remove(&img.id)?;
        }
    }
    gc::collect(db, content, snapshots, leases)?;
    Ok(())
}

impl Engine {
    /// Pulls an image; returns its record.
    pub async fn pull_image(&self, image: &str, creds: &Credentials) -> Result<ImageInfo> {
        let reference: ImageRef = image.parse()?;
        let span = tracing::info_span!("pull", image = %reference);
        let started = std::time::Instant::now();
        let record = self.puller.pull(&reference, creds).instrument(span).await;
        self.metrics
            .image_pull_duration
            .observe(started.elapsed().as_secs_f64());
        let record = record.map_err(|source| Error::Pull {
            image: reference.to_string(),
            source,
        })?;
        Ok(self.info(record))
    }

    fn info(&self, record: ImageRecord) -> ImageInfo {
        let pinned = record
            .repo_tags
            .iter()
            .chain(&record.repo_digests)
            .any(|n| self.pinned.contains(n));
        ImageInfo { record, pinned }
    }

    /// Finds an image by id (`sha256:...` or bare hex), tag or repo digest.
    pub fn resolve_image(&self, image: &str) -> Result<Option<ImageRecord>> {
        let image = image.trim();
        if let Ok(d) = image.parse::<Digest>() {
            return Ok(self.db.image_get(&d)?);
        }
        if image.len() == 64
            && let Ok(d) = format!("sha256:{image}").parse::<Digest>()
            && let Some(r) = self.db.image_get(&d)?
        {
            return Ok(Some(r));
        }
        let reference: ImageRef = image.parse()?;
        if let Some(d) = &reference.digest {
            let wanted = reference.with_digest(d);
            return Ok(self
                .db
                .image_list()?
                .into_iter()
                .find(|i| i.repo_digests.contains(&wanted)));
        }
        match reference.tagged() {
            Some(t) => match self.db.tag_get(&t)? {
                Some(id) => Ok(self.db.image_get(&id)?),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// An image's status; None when berth does not have it (not an error in CRI).
    pub fn image_status(&self, image: &str) -> Result<Option<ImageInfo>> {
        Ok(self.resolve_image(image)?.map(|r| self.info(r)))
    }

    /// Every image, or those matching `filter` (a name, tag, digest or id).
    pub fn list_images(&self, filter: Option<&str>) -> Result<Vec<ImageInfo>> {
        let records = match filter.filter(|f| !f.is_empty()) {
            Some(f) => self.resolve_image(f)?.into_iter().collect(),
            None => self.db.image_list()?,
        };
        Ok(records.into_iter().map(|r| self.info(r)).collect())
    }

    /// Removes an image and then every blob and layer nothing else references. Removing an
    /// image berth does not have succeeds, as kubelet expects.
    pub fn remove_image(&self, image: &str) -> Result<()> {
        let Some(rec) = self.resolve_image(image)? else {
            return Ok(());
        };
        self.db.image_remove(&rec.id)?;
        tracing::info!(image = %rec.id, tags = ?rec.repo_tags, "image removed");
        self.collect_garbage()?;
        Ok(())
    }

    /// Removes every blob and layer that no image, container or pull still uses.
    pub fn collect_garbage(&self) -> Result<gc::GcReport> {
        gc::collect(
            &self.db,
            &self.content,
            &self.snapshots,
            &self.puller.leases,
        )
    }

    /// Bytes and inodes used by images (blobs and unpacked layers) and by container
    /// writable layers.
    pub fn image_fs_info(&self) -> Result<FsInfo> {
        let mut image = snapshots::usage(self.content.root())?;
        for rec in self.db.snapshot_list()? {
            image += rec.usage;
        }
        // The layer store's own directories.
        image.inodes += 3;
        let containers_dir = self.cfg.root.join("containers");
        crate::durable::create_dir_all(&containers_dir, 0o700)?;
        let container = self.containers_usage(&containers_dir)?;
        Ok(FsInfo {
            image: FsUsage {
                mountpoint: self.cfg.root.clone(),
                usage: image,
            },
            container: FsUsage {
                mountpoint: containers_dir,
                usage: container,
            },
        })
    }

    /// Where a layer's unpacked directory is.
    pub fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots.fs_path(chain_id)
    }

    /// Pull counters, for metrics.
    pub fn pull_stats(&self) -> &super::pull::PullStats {
        &self.puller.stats
    }
}
