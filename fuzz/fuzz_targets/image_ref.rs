//! Image references as kubelet and crictl send them: parse, and what parses prints back
//! to itself.
use berth_engine::images::reference::ImageRef;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(r) = s.parse::<ImageRef>() {
            let printed = r.to_string();
            let again: ImageRef = printed.parse().unwrap_or_else(|e| {
                panic!("{s:?} printed as {printed:?}, which does not parse: {e}")
            });
            assert_eq!(again.to_string(), printed, "not stable: {s:?}");
        }
    });
}
