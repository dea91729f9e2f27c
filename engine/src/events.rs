//! Container lifecycle events for CRI GetContainerEvents (kubelet's evented PLEG).
//!
//! Every state change is emitted where it is recorded, so an exit that berthd learns at
//! start-up from the monitor's exit record (it happened while berthd was down) becomes a
//! STOPPED event like any other. Subscribers get the events of the last minute first (a
//! kubelet reconnecting after a berthd restart sees what happened meanwhile), then live
//! ones through a bounded broadcast channel: a subscriber that falls behind is told so and
//! dropped, and never slows the runtime down.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One event: a container's, or a pod sandbox's (then `container_id` is the pod's id, as
/// containerd does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    /// When it happened, ns since the epoch.
    pub created_at: i64,
}

/// How long emitted events are replayed to new subscribers.
const REPLAY: Duration = Duration::from_secs(60);
/// How many events a subscriber may fall behind before it is dropped.
const CAPACITY: usize = 1024;

#[derive(Debug)]
pub(crate) struct Events {
    tx: broadcast::Sender<ContainerEvent>,
    recent: Mutex<VecDeque<ContainerEvent>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl Events {
    pub(crate) fn emit(&self, container_id: &str, pod_id: &str, kind: EventKind, created_at: i64) {
        let ev = ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            created_at,
        };
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let horizon = created_at - i64::try_from(REPLAY.as_nanos()).unwrap_or(i64::MAX);
        while recent.front().is_some_and(|e| e.created_at < horizon) || recent.len() >= CAPACITY {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        // No subscriber is fine.
        let _ = self.tx.send(ev);
    }

    /// The recent events and a receiver for the ones after them, with no gap between.
    pub(crate) fn subscribe(&self) -> (Vec<ContainerEvent>, broadcast::Receiver<ContainerEvent>) {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = crate::clock::now_nanos();
        let horizon = now - i64::try_from(REPLAY.as_nanos()).unwrap_or(i64::MAX);
        let replay = recent
            .iter()
            .filter(|e| e.created_at >= horizon)
            .cloned()
            .collect();
        (replay, self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_then_live_without_gap() {
        let e = Events::default();
        let now = crate::clock::now_nanos();
        e.emit("old", "p", EventKind::Created, now - 120_000_000_000);
        e.emit("a", "p", EventKind::Created, now);
        let (replay, mut rx) = e.subscribe();
        assert_eq!(
            replay.len(),
            1,
            "events older than a minute are not replayed"
        );
        assert_eq!(replay[0].container_id, "a");
        e.emit("a", "p", EventKind::Started, now + 1);
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::Started);
    }

    #[test]
    fn a_slow_subscriber_lags_instead_of_blocking() {
        let e = Events::default();
        let (_, mut rx) = e.subscribe();
        for i in 0..(CAPACITY + 10) {
            e.emit(
                &format!("c{i}"),
                "p",
                EventKind::Created,
                crate::clock::now_nanos(),
            );
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
