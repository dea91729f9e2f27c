//! The layer tar applier, on a directory of its own: whatever the tar says, nothing is
//! written outside that directory.
use std::path::Path;

use berth_engine::snapshots::apply::{Limits, apply};

fn main() {
    let jail = tempfile::tempdir().expect("tempdir");
    afl::fuzz!(|data: &[u8]| {
        let dest = jail.path().join("layer");
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir(&dest).expect("layer dir");
        let _ = apply(
            data,
            &dest,
            Limits {
                max_bytes: 8 << 20,
                max_entries: 4096,
            },
        );
        let outside: Vec<_> = std::fs::read_dir(jail.path())
            .expect("read jail")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "layer")
            .collect();
        assert!(
            outside.is_empty(),
            "the layer wrote outside its directory: {outside:?}"
        );
        let _ = Path::new("/");
    });
}
