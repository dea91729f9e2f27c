//! The on-disk layout of the state db (`<root>/state.redb`).
//!
//! ```text
//! state.redb
//! ├── meta            &str -> &[u8]
//! │   ├── "schema_version"   u32, little endian: the layout version below
//! │   └── "written_by"       utf-8: the berth version that last migrated or created the db
//! ├── node            &str -> &str   node-level settings that survive restarts
//! │   └── "pod_cidr"         the pod CIDR kubelet sent through UpdateRuntimeConfig
//! ├── images          image id (config digest) -> ImageRecord (JSON)        [v2]
//! ├── tags            "registry/repo:tag" -> image id                        [v2]
//! ├── snapshots       chain id -> SnapshotRecord (JSON)                      [v2]
//! ├── pods            pod id -> PodRecord (JSON)                             [v3]
//! └── containers      container id -> ContainerRecord (JSON)                 [v3]
//! ```
//!
//! References (for garbage collection): an image record references its index, manifest,
//! config and layer blobs and its layers' snapshots. A blob or snapshot that no record
//! (and no in-flight pull's lease) references is garbage.
//!
//! The rule: change the tree, add a migration step in `migrate.rs`, bump [`SCHEMA_VERSION`].
//! Records are engine-owned serde structs with their own `schema_version`. The one message
//! inside one is a container's launch spec, kept as the monitor contract's encoded
//! `LaunchSpec` (a durable format with numbered fields; see `records`).

use redb::TableDefinition;

/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 4;

pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const NODE: TableDefinition<&str, &str> = TableDefinition::new("node");
pub const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
pub const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
pub const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_WRITTEN_BY: &str = "written_by";
pub const NODE_POD_CIDR: &str = "pod_cidr";
