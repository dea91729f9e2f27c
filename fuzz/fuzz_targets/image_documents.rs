//! What a registry sends: manifests and indexes (with and without a media type), the
//! platform choice over an index, and image configs.
use berth_engine::images::manifest::{
    self, DOCKER_MANIFEST, Document, OCI_INDEX, OCI_MANIFEST, Platform,
};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        for media in [
            None,
            Some(OCI_MANIFEST),
            Some(OCI_INDEX),
            Some(DOCKER_MANIFEST),
        ] {
            if let Ok(Document::Index(idx)) = manifest::parse_document(data, media) {
                let _ = manifest::select_platform(&idx, &Platform::host());
            }
        }
        for layers in [0, 1, 3] {
            if let Ok(c) = manifest::parse_config(data, layers) {
                assert_eq!(c.diff_ids.len(), layers);
                let _ = manifest::chain_ids(&c.diff_ids);
            }
        }
    });
}
