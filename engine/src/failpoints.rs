//! Failpoints: named steps of the lifecycle (RunPodSandbox, CreateContainer,
//! StartContainer, StopPodSandbox, RemovePodSandbox, PullImage) that a test can make fail
//! or crash berthd at, to check that what a crash leaves behind is found and undone.
//!
//! Compiled in only with the `failpoints` feature (the e2e crate turns it on for the
//! workspace's test builds; a release build of berthd alone has none): without it
//! [`fail_point!`] expands to nothing. With it, `BERTH_FAILPOINTS=name=abort;other=error`
//! in berthd's environment makes the step `name` abort the process (as a crash would: no
//! destructor, no clean-up) and `other` fail with an Internal error; `name=delay(MS)` makes
//! an asynchronous step (`fail_point!(async "name")`) wait MS milliseconds, to open a race
//! window a test needs held open.
//!
//! Every failpoint is listed in [`ALL`] (a unit test checks the list against the
//! sources), so that a test can walk all of them; a new multi-step operation adds its own.

/// Every failpoint, in the order of its operation's steps.
pub const ALL: &[&str] = &[
    "pull.blobs_fetched",
    "pull.layers_unpacked",
    "pull.before_record",
    "run_pod.dir_made",
    "run_pod.cgroup_made",
    "run_pod.monitor_started",
    "run_pod.network_set_up",
    "run_pod.recorded",
    "create_container.layer_made",
    "create_container.cgroup_made",
    "create_container.recorded",
    "start_container.before_monitor",
    "start_container.started",
    "stop_pod.containers_stopped",
    "stop_pod.torn_down",
    "remove_pod.containers_removed",
    "remove_pod.torn_down",
];

/// What a failpoint does when it is hit.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Error,
    Delay(std::time::Duration),
}

#[cfg(feature = "failpoints")]
fn configured() -> &'static std::collections::HashMap<String, Action> {
    static CONFIG: std::sync::OnceLock<std::collections::HashMap<String, Action>> =
        std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let spec = std::env::var("BERTH_FAILPOINTS").unwrap_or_default();
        spec.split(';')
            .filter_map(|item| {
                let (name, action) = item.split_once('=')?;
                let action = match action.trim() {
                    "abort" => Action::Abort,
                    "error" => Action::Error,
                    other => match parse_delay(other) {
                        Some(d) => Action::Delay(d),
                        None => {
                            tracing::warn!(
                                failpoint = name,
                                action = other,
                                "unknown failpoint action"
                            );
                            return None;
                        }
                    },
                };
                if !ALL.contains(&name.trim()) {
                    tracing::warn!(failpoint = name, "no such failpoint");
                }
                Some((name.trim().to_owned(), action))
            })
            .collect()
    })
}

/// The wait of a `delay(MS)` action.
#[cfg(feature = "failpoints")]
fn parse_delay(action: &str) -> Option<std::time::Duration> {
    let ms = action.strip_prefix("delay(")?.strip_suffix(')')?;
    ms.parse().ok().map(std::time::Duration::from_millis)
}

/// The failure a failpoint set to `error` injects (into whichever error type the step
/// returns).
#[derive(Debug, Clone, Copy)]
pub struct Injected(pub &'static str);

impl From<Injected> for crate::Error {
    fn from(i: Injected) -> Self {
        crate::Error::Internal(format!("failpoint {}", i.0))
    }
}

impl From<Injected> for crate::images::pull::PullError {
    fn from(i: Injected) -> Self {
        crate::images::pull::PullError::Internal(format!("failpoint {}", i.0))
    }
}

/// Called by [`fail_point!`]: aborts for `abort`, an error for `error`, else nothing.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) -> Option<Injected> {
    match configured().get(name) {
        Some(Action::Abort) => {
            tracing::warn!(failpoint = name, "failpoint: aborting");
            std::process::abort()
        }
        Some(Action::Error) => Some(Injected(name)),
        Some(Action::Delay(_)) | None => None,
    }
}

/// Called by [`fail_point!`]'s async form: how long to wait at `name` (`delay(MS)`).
#[cfg(feature = "failpoints")]
pub fn delay(name: &'static str) -> Option<std::time::Duration> {
    match configured().get(name) {
        Some(Action::Delay(d)) => {
            tracing::warn!(
                failpoint = name,
                delay_ms = d.as_millis(),
                "failpoint: waiting"
            );
            Some(*d)
        }
        _ => None,
    }
}

/// A named step that a test can make fail (returns `Err` from the enclosing function) or
/// crash; nothing without the `failpoints` feature.
#[macro_export]
macro_rules! fail_point {
    (async $name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if let Some(d) = $crate::failpoints::delay($name) {
                tokio::time::sleep(d).await;
            }
        }
        $crate::fail_point!($name)
    };
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if let Some(e) = $crate::failpoints::hit($name) {
                return Err(e.into());
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `fail_point!` in the sources is in ALL, and every name in ALL is in the
    /// sources once.
    #[test]
    fn the_list_is_the_sources() {
        let sources = [
            include_str!("images/pull.rs"),
            include_str!("pods/run.rs"),
            include_str!("pods/stop.rs"),
            include_str!("pods/remove.rs"),
            include_str!("containers/create.rs"),
            include_str!("containers/start.rs"),
        ];
        let mut found = Vec::new();
        for s in sources {
            for part in s.split("fail_point!(").skip(1) {
                let part = part.strip_prefix("async ").unwrap_or(part);
                if let Some(name) = part.strip_prefix('"')
                    && let Some(end) = name.find('"')
                {
                    found.push(&name[..end]);
                }
            }
        }
        let mut all = ALL.to_vec();
        found.sort_unstable();
        all.sort_unstable();
        assert_eq!(found, all);
    }
}
