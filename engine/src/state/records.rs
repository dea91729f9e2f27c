//! Records kept in the state db: engine-owned serde structs with their own schema version.

use serde::{Deserialize, Serialize};

use crate::id::Digest;
use crate::images::manifest::{LayerCompression, RunConfig};
use crate::snapshots::Usage;

/// Version of the record encodings below.
pub const RECORD_VERSION: u32 = 1;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: LayerCompression,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Names the snapshot of this layer and all below it.
    pub chain_id: Digest,
}

/// A pulled image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub schema_version: u32,
    /// The image id: the digest of its config.
    pub id: Digest,
    /// `registry/repo:tag` names pointing at this image.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:...` names of its manifest (or index).
    pub repo_digests: Vec<String>,
    /// The index the image was selected from, if it was pulled through one.
    pub index_digest: Option<Digest>,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub config: RunConfig,
    /// Unix time in nanoseconds of the last pull.
    pub pulled_at: i64,
}

impl ImageRecord {
    /// Size as CRI reports it: the bytes of its manifest, config and layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest_size + self.config_size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// Every blob this image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain(std::iter::once(&self.manifest_digest))
            .chain(std::iter::once(&self.id))
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// An unpacked layer in the layer store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub schema_version: u32,
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    pub usage: Usage,
    pub created_at: i64,
}
