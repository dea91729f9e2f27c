//! CNI network configs (.conflist and single .conf files) and plugin results.
use std::path::Path;

use berth_cni::plugin::{NetworkList, result_ips};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            for name in ["10-pods.conflist", "10-pods.conf"] {
                let _ = NetworkList::parse(Path::new(name), text);
            }
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            let _ = result_ips(&v);
        }
    });
}
