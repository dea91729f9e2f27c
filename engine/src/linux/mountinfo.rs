//! `/proc/self/mountinfo`: which mount holds a path, and how it propagates. Pure parsing
//! over the text, so that it is tested against fixtures.

use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields berth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// In a peer group (`shared:N`): mounts and unmounts below it reach its peers.
    pub shared: bool,
    /// Receives from a master peer group (`master:N`).
    pub slave: bool,
}

/// Parses mountinfo: `id parent maj:min root mountpoint opts [optional...] - fstype ...`.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, _) = line.split_once(" - ")?;
            let mut f = left.split_whitespace();
            let mount_point = f.nth(4)?;
            let optional: Vec<&str> = f.skip(1).collect();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                shared: optional.iter().any(|o| o.starts_with("shared:")),
                slave: optional.iter().any(|o| o.starts_with("master:")),
            })
        })
        .collect()
}

/// The mount that holds `path` (an absolute path without symlinks): the last-mounted one
/// whose mount point is the longest prefix of it.
pub fn containing<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// The mount holding `path` in the caller's mount namespace (symlinks resolved first).
pub fn mount_of(path: &Path) -> std::io::Result<MountEntry> {
    let real = std::fs::canonicalize(path)?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = parse(&text);
    containing(&mounts, &real).cloned().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no mount holds {}", real.display()),
        )
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:22 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
40 22 254:0 /srv/a /mnt/a\\040b rw,relatime shared:7 master:1 - ext4 /dev/vda rw
41 25 0:22 /x /run/x rw master:3 - tmpfs tmpfs rw
42 25 0:50 / /run/x rw shared:9 - tmpfs tmpfs rw
";

    #[test]
    fn finds_the_mount_and_its_propagation() {
        let m = parse(INFO);
        assert_eq!(m.len(), 5);
        let at = |p: &str| containing(&m, Path::new(p)).unwrap().clone();
        assert_eq!(at("/var/lib").mount_point, PathBuf::from("/"));
        assert!(at("/var/lib").shared);
        let run = at("/run/berth");
        assert_eq!(run.mount_point, PathBuf::from("/run"));
        assert!(!run.shared && !run.slave);
        let ab = at("/mnt/a b/c");
        assert_eq!(ab.mount_point, PathBuf::from("/mnt/a b"));
        assert!(ab.shared && ab.slave);
        // Two mounts on /run/x: the later one covers the earlier.
        let x = at("/run/x/y");
        assert!(x.shared && !x.slave);
    }
}
