//! Whether a container was killed by the OOM killer: its cgroup's `oom_kill` count, read
//! before it starts, followed while it runs and read again at its exit.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A running container's OOM kill accounting.
pub(super) struct OomWatch {
    /// Its cgroup's `memory.events` (v2) or `memory.oom_control` (v1); none when the
    /// engine sent no file (no memory cgroup).
    file: Option<PathBuf>,
    before: u64,
    /// The highest count seen while it ran.
    seen: Rc<Cell<u64>>,
    /// cgroup v2: its parent's (the pod's) `memory.events` and that count at the start, for
    /// when its own cgroup is gone by the time its exit is reaped. v2 counts an OOM kill in
    /// every ancestor too (unless mounted with `memory_localevents`).
    parent: Option<(PathBuf, u64)>,
    /// berth itself sent it SIGKILL (StopContainer's escalation, the pod's shutdown).
    killed_by_berth: Cell<bool>,
    /// Dropped with this record: ends the watch of the count.
    ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OomWatch {
    /// Reads the counts before the container's process exists. `in_anothers_pid_namespace`:
    /// it joins another container's pid namespace (CRI's TARGET mode), whose init's death,
    /// an OOM kill included, SIGKILLs it too: its kills are not guessed from its pod's count.
    pub(super) fn before_start(file: &str, in_anothers_pid_namespace: bool) -> Self {
        let file = (!file.is_empty()).then(|| PathBuf::from(file));
        let own = file.as_deref().and_then(read_count);
        let before = own.unwrap_or(0);
        // Only for a cgroup whose own count could be read: one without it (no memory
        // controller) would take any SIGKILL for an OOM kill somewhere in the pod.
        let parent = file
            .as_deref()
            .filter(|f| own.is_some() && !in_anothers_pid_namespace && f.ends_with("memory.events"))
            .and_then(|f| f.parent()?.parent())
            .map(|p| p.join("memory.events"))
            .and_then(|p| read_count(&p).map(|n| (p, n)));
        OomWatch {
            file,
            before,
            seen: Rc::new(Cell::new(before)),
            parent,
            killed_by_berth: Cell::new(false),
            ended: None,
        }
    }

    /// Follows the count while the container runs (v2 only: v1's `memory.oom_control` is
    /// never signalled, its count is read at the exit only). On the monitor's local task set.
    pub(super) fn follow(&mut self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        if file.ends_with("memory.oom_control") {
            return;
        }
        let (ended, running_ended) = tokio::sync::oneshot::channel();
        self.ended = Some(ended);
        tokio::task::spawn_local(watch_oom(file, self.seen.clone(), running_ended));
    }

    /// berth is sending it SIGKILL: a kill seen only through its parent's count is then
    /// not taken for the OOM killer's.
    pub(super) fn killed_by_berth(&self) {
        self.killed_by_berth.set(true);
    }

    /// At its exit (`signal` 0 for a normal exit): was it OOM killed?
    pub(super) fn verdict(&self, signal: i32) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let own = read_count(file);
        // Only read when needed: the common case is the container's own file.
        let parent = match (own, &self.parent) {
            (None, Some((p, before))) => Some((*before, read_count(p))),
            _ => None,
        };
        decide(&Counts {
            before: self.before,
            seen: self.seen.get(),
            own,
            signal,
            killed_by_berth: self.killed_by_berth.get(),
            parent,
        })
    }
}

/// What the exit's verdict is made of.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// The container's cgroup's count before it started, the highest seen while it ran,
    /// and now (none when its cgroup is gone).
    before: u64,
    seen: u64,
    own: Option<u64>,
    signal: i32,
    killed_by_berth: bool,
    /// Its parent's count at its start and now.
    parent: Option<(u64, Option<u64>)>,
}

/// The container's own count decides whenever it was read at its exit or seen to grow. Its
/// cgroup can be gone by its exit with the last change unseen: systemd removes a scope's
/// cgroup as soon as it is empty, which races with the monitor's reap, and the kernel
/// signals changes of `memory.events` at most every 10 ms (a hog at its limit changes the
/// `max` count all the time), dropping a pending signal when the cgroup is removed. Then a
/// SIGKILL that berth did not send, with a kill counted in the pod's cgroup since the
/// container started, is the OOM killer's: the one case it would not be is another
/// container of the pod OOM killed while this one was killed by something else and its
/// scope removed before the reap. (Not used for a container in another's pid namespace,
/// nor for one whose own count could not be read at its start.)
fn decide(c: &Counts) -> bool {
    if c.own.unwrap_or(0).max(c.seen) > c.before {
        return true;
    }
    c.own.is_none()
        && c.signal == nix::sys::signal::Signal::SIGKILL as i32
        && !c.killed_by_berth
        && matches!(c.parent, Some((before, Some(now))) if now > before)
}

fn read_count(file: &Path) -> Option<u64> {
    std::fs::read(file).ok().map(|t| oom_kills_in(&t))
}

/// Follows a container's OOM kill counter while it runs, so that a kill is known even when
/// the cgroup is gone by the time the exit is reaped: systemd removes a scope's cgroup once
/// it is empty. Ends when the container's exit has been handled (`ended`'s sender, kept
/// with the running container, is dropped).
///
/// The kernel signals each change of a cgroup v2 `memory.events` to pollers of the file
/// (EPOLLPRI, kernfs's file notification); v1's `memory.oom_control` is never notified
/// (its count is read at the exit, and no watch is made for it). Not inotify on the file,
/// which the kernel signals as well: closing an inotify instance waits for an SRCU grace
/// period (`fsnotify` flushes its mark connectors' destruction), which held the
/// single-threaded monitor for 10-20 ms at every container's exit, and a pod's Shutdown
/// behind it.
async fn watch_oom(
    file: PathBuf,
    seen: Rc<std::cell::Cell<u64>>,
    mut ended: tokio::sync::oneshot::Receiver<()>,
) {
    follow_kernfs_file(&file, &mut ended, |text| {
        seen.set(seen.get().max(oom_kills_in(text)));
    })
    .await;
}

/// Calls `on_change` with the text of kernfs file `file` (a cgroup's) each time the kernel
/// signals a change of it, until `ended` resolves (a removed cgroup wakes no poller; a
/// read of one fails, which ends the loop too). A newly opened kernfs file counts as
/// changed until its first read: the first call comes at once, which catches a change
/// between the caller's last read and this open.
async fn follow_kernfs_file(
    file: &Path,
    ended: &mut tokio::sync::oneshot::Receiver<()>,
    mut on_change: impl FnMut(&[u8]),
) {
    use tokio::io::Interest;
    let Ok(f) = std::fs::File::open(file) else {
        return;
    };
    let Ok(afd) = crate::linux::sys::async_fd_for(f.into(), Interest::PRIORITY) else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = tokio::select! {
            r = afd.ready(Interest::PRIORITY) => match r {
                Ok(g) => g,
                Err(_) => return,
            },
            _ = &mut *ended => return,
        };
        // Read through this descriptor: the read is what marks the change seen.
        match nix::sys::uio::pread(afd.get_ref(), &mut buf, 0) {
            Ok(n) => on_change(&buf[..n]),
            Err(_) => return, // the cgroup is gone
        }
        guard.clear_ready();
    }
}

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` text.
fn oom_kills_in(text: &[u8]) -> u64 {
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(signal: i32) -> Counts {
        Counts {
            before: 1,
            seen: 1,
            own: Some(1),
            signal,
            killed_by_berth: false,
            parent: Some((3, Some(3))),
        }
    }

    #[test]
    fn the_containers_own_count_decides_while_its_cgroup_is_there() {
        assert!(!decide(&exit(9)));
        assert!(!decide(&exit(0)));
        assert!(decide(&Counts {
            own: Some(2),
            ..exit(9)
        }));
        // Seen to grow while it ran, the cgroup gone since.
        assert!(decide(&Counts {
            seen: 2,
            own: None,
            ..exit(9)
        }));
        // A kill elsewhere in the pod does not count while its own file says none.
        assert!(!decide(&Counts {
            parent: Some((3, Some(4))),
            ..exit(9)
        }));
    }

    #[test]
    fn a_gone_cgroup_falls_back_to_the_pods_count_for_a_sigkill_berth_did_not_send() {
        let gone = Counts {
            own: None,
            parent: Some((3, Some(4))),
            ..exit(9)
        };
        assert!(decide(&gone));
        assert!(!decide(&Counts { signal: 0, ..gone }));
        assert!(!decide(&Counts { signal: 15, ..gone }));
        assert!(!decide(&Counts {
            killed_by_berth: true,
            ..gone
        }));
        assert!(!decide(&Counts {
            parent: Some((3, Some(3))),
            ..gone
        }));
        assert!(!decide(&Counts {
            parent: Some((3, None)),
            ..gone
        }));
        assert!(!decide(&Counts {
            parent: None,
            ..gone
        }));
    }

    #[test]
    fn the_parent_of_a_v2_cgroup_is_read_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("c1");
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 4\noom_kill 4\n").unwrap();
        std::fs::write(cg.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let file = cg.join("memory.events");
        let file = file.to_str().unwrap();
        // In another container's pid namespace, or without a count of its own: no guess.
        assert_eq!(OomWatch::before_start(file, true).parent, None);
        let no_count = dir.path().join("c2/memory.events");
        assert_eq!(
            OomWatch::before_start(no_count.to_str().unwrap(), false).parent,
            None
        );
        let w = OomWatch::before_start(file, false);
        assert_eq!(w.before, 1);
        assert_eq!(w.parent, Some((dir.path().join("memory.events"), 4)));
        assert!(!w.verdict(9));
        // The container's cgroup goes (systemd's scope), one more kill in the pod's.
        std::fs::remove_dir_all(&cg).unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 5\noom_kill 5\n").unwrap();
        assert!(w.verdict(9));
        w.killed_by_berth();
        assert!(!w.verdict(9));
        // v1 has no hierarchical count to fall back to.
        let v1 = OomWatch::before_start("/nonexistent/memory.oom_control", false);
        assert_eq!(v1.parent, None);
        assert!(!v1.verdict(9));
        assert!(!OomWatch::before_start("", false).verdict(9));
    }

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_files() {
        let v2 = b"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills_in(v2), 2);
        let v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(oom_kills_in(v1), 5);
        assert_eq!(oom_kills_in(b"oom_kill_disable 0\n"), 0);
        assert_eq!(oom_kills_in(b""), 0);
    }

    /// The change signal `watch_oom` relies on, on a file every cgroup2 directory has:
    /// `cgroup.events` changes when a first process comes in (memory.events, which the
    /// kernel signals the same way, needs a memory controller on cgroup2 and an OOM kill).
    #[test]
    fn a_change_of_a_kernfs_file_is_signalled() {
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| {
                nix::sys::statfs::statfs(p)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
        else {
            return;
        };
        let dir = root.join(format!("berth-test-kernfs-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            return; // not root
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let texts = std::cell::RefCell::new(Vec::new());
        let mut child = None;
        let (_end, mut ended) = tokio::sync::oneshot::channel();
        rt.block_on(async {
            let file = dir.join("cgroup.events");
            let follow = follow_kernfs_file(&file, &mut ended, |t| {
                texts
                    .borrow_mut()
                    .push(String::from_utf8_lossy(t).into_owned());
            });
            let populate = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let c = std::process::Command::new("sleep")
                    .arg("10")
                    .spawn()
                    .unwrap();
                std::fs::write(dir.join("cgroup.procs"), c.id().to_string()).unwrap();
                child = Some(c);
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                tokio::join!(follow, populate)
            })
            .await;
        });
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir(&dir);
        let texts = texts.into_inner();
        assert!(
            texts.iter().any(|t| t.contains("populated 1")),
            "no change of cgroup.events was signalled: {texts:?}"
        );
    }
}
