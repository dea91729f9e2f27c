//! Localhost seccomp profiles (OCI JSON), compiled to filters as for a container with the
//! default capabilities and with all of them.
use std::collections::BTreeSet;

use berth_engine::spec::seccomp::{Profile, compile};

fn main() {
    let none = BTreeSet::new();
    let all: BTreeSet<u8> = (0..=40).collect();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(p) = serde_json::from_slice::<Profile>(data) {
            let _ = compile(&p, &none);
            let _ = compile(&p, &all);
        }
    });
}
