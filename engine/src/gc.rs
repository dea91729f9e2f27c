//! Garbage collection of blobs and layers, by references.
//!
//! Roots are the image records (their index, manifest, config and layer blobs, and their
//! layers' chain ids), the layers under every container's root filesystem, and the leases
//! of pulls in flight. Everything else in the content
//! store and the layer store is garbage. The lease table is held for the whole decision and
//! deletion, so no pull can start relying on an object that is being removed.

use std::collections::HashSet;

use crate::content::ContentStore;
use crate::error::Result;
use crate::images::lease::Leases;
use crate::snapshots::SnapshotStore;
use crate::state::StateDb;

/// What a collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub snapshots: u64,
}

/// Removes every blob and layer that nothing references.
pub fn collect(
    db: &StateDb,
    content: &ContentStore,
    snapshots: &SnapshotStore,
    leases: &Leases,
) -> Result<GcReport> {
    let held = leases.hold();
    let images = db.image_list()?;
    let mut blobs: HashSet<String> = HashSet::new();
    let mut layers: HashSet<String> = HashSet::new();
    for img in &images {
        blobs.extend(img.blobs().map(ToString::to_string));
        layers.extend(img.layers.iter().map(|l| l.chain_id.to_string()));
    }
    // Containers are roots too: the layers under a container's root filesystem stay, even
    // when its image was removed.
    for c in db.container_list()? {
        for dir in c
            .launch
            .rootfs
            .lowerdirs
            .iter()
            .chain(&c.image_volume_layers)
        {
            // <root>/snapshots/sha256/<hex>/fs
            if let Some(hex) = dir
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
            {
                layers.insert(format!("sha256:{hex}"));
            }
        }
    }
    let mut report = GcReport::default();
    for (d, size) in content.list().map_err(crate::Error::from)? {
        if !blobs.contains(d.as_str()) && !held.contains(d.as_str()) {
            content.delete(&d).map_err(crate::Error::from)?;
            report.blobs += 1;
            report.blob_bytes += size;
        }
    }
    for chain in snapshots.list()? {
        if !layers.contains(chain.as_str()) && !held.contains(chain.as_str()) {
            snapshots.remove(&chain)?;
            db.snapshot_remove(&chain)?;
            report.snapshots += 1;
        }
    }
    // Records of layers whose directory is gone (a crash between rename and record).
    for rec in db.snapshot_list()? {
        if !snapshots.exists(&rec.chain_id) && !held.contains(rec.chain_id.as_str()) {
            db.snapshot_remove(&rec.chain_id)?;
        }
    }
    drop(held);
    if report != GcReport::default() {
        tracing::info!(
            blobs = report.blobs,
            blob_bytes = report.blob_bytes,
            layers = report.snapshots,
            "garbage collected"
        );
    }
    Ok(report)
}
