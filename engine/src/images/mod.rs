//! Images: references, registries, manifests, pulls and image records.

pub mod manifest;
pub mod reference;
