//! Preloading images from a directory (`[images] preload_dir`), as air-gapped
//! distributions do: every archive there is imported at start-up and whenever one appears
//! or changes. What was imported (by file name, size and modification time) is kept in
//! `<root>/preload.json`, so a restart does not import the same files again; a file that
//! failed is retried only once it changes (a copy still in progress finishes, a broken file
//! is replaced). Drop archives in with a rename (`cp x.tar dir/.x.tar && mv ...`): names
//! starting with a dot are not read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Engine;

/// How often the directory is looked at after the first scan.
pub const POLL: Duration = Duration::from_secs(10);

/// What berth remembers of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    /// The images it held, or why it was refused.
    outcome: String,
}

fn state_file(root: &Path) -> PathBuf {
    root.join("preload.json")
}

fn load(root: &Path) -> BTreeMap<String, Seen> {
    std::fs::read(state_file(root))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(root: &Path, seen: &BTreeMap<String, Seen>) {
    if let Ok(b) = serde_json::to_vec_pretty(seen)
        && let Err(e) = crate::durable::write_atomic(&state_file(root), &b)
    {
        tracing::warn!(error = %e, "cannot record the preloaded images");
    }
}

/// The archives of `dir` now: regular files not starting with a dot, with size and mtime.
fn scan(dir: &Path) -> Vec<(String, PathBuf, u64, i128)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::metadata(e.path()).ok()?;
            if name.starts_with('.') || !meta.is_file() {
                return None;
            }
            let mtime = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos() as i128;
            Some((name, e.path(), meta.len(), mtime))
        })
        .collect();
    out.sort();
    out
}

impl Engine {
    /// Imports the archives of `dir` that are new or changed since berth last saw them;
    /// returns how many were imported.
    pub async fn preload_once(&self, dir: &Path) -> usize {
        let mut seen = load(&self.cfg.root);
        let mut imported = 0;
        let mut changed = false;
        for (name, path, size, mtime_ns) in scan(dir) {
            if seen
                .get(&name)
                .is_some_and(|s| s.size == size && s.mtime_ns == mtime_ns)
            {
                continue;
            }
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot open an archive to preload");
                    continue;
                }
            };
            let outcome = match self.import_images(file, None).await {
                Ok(images) => {
                    imported += 1;
                    let names: Vec<String> = images
                        .iter()
                        .map(|i| {
                            i.record
                                .repo_tags
                                .first()
                                .cloned()
                                .unwrap_or_else(|| i.record.id.to_string())
                        })
                        .collect();
                    tracing::info!(file = %path.display(), images = ?names, "preloaded images");
                    format!("imported {}", names.join(" "))
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot preload an archive; it is tried again when it changes");
                    format!("refused: {e}")
                }
            };
            seen.insert(
                name,
                Seen {
                    size,
                    mtime_ns,
                    outcome,
                },
            );
            changed = true;
        }
        if changed {
            save(&self.cfg.root, &seen);
        }
        imported
    }
}

/// Preloads `dir` now and then every [`POLL`], until the task is dropped.
pub async fn run(engine: Arc<Engine>, dir: PathBuf) {
    tracing::info!(dir = %dir.display(), "preloading images from a directory");
    loop {
        engine.preload_once(&dir).await;
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_skip_dot_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.tar"), b"x").unwrap();
        std::fs::write(d.path().join("a.tar.gz"), b"yy").unwrap();
        std::fs::write(d.path().join(".copying.tar"), b"z").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let names: Vec<(String, u64)> = scan(d.path())
            .into_iter()
            .map(|(n, _, s, _)| (n, s))
            .collect();
        assert_eq!(names, vec![("a.tar.gz".into(), 2), ("b.tar".into(), 1)]);
        assert!(scan(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn what_was_seen_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut seen = BTreeMap::new();
        seen.insert(
            "a.tar".to_owned(),
            Seen {
                size: 1,
                mtime_ns: 2,
                outcome: "imported x".into(),
            },
        );
        save(d.path(), &seen);
        assert_eq!(load(d.path()), seen);
    }
}
