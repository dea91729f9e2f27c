//! Images: references, registries, manifests, pulls and image records.

pub mod archive;
pub mod lease;
pub mod manifest;
pub mod preload;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod service;
