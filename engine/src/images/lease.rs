//! Leases and in-flight locks for pulls.
//!
//! A pull puts every blob digest and chain id it is about to use on its lease *before* it
//! checks whether that object exists; garbage collection holds the lease table while it
//! decides and deletes. So an object a pull relies on is never collected under it, and a
//! crash simply drops every lease (they live in memory only).
//!
//! In-flight locks make concurrent pulls of the same layer download and unpack it once:
//! the second waits for the first and then finds the layer present.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The lease table.
#[derive(Debug, Default)]
pub struct Leases {
    table: Mutex<HashMap<u64, HashSet<String>>>,
    next: AtomicU64,
}

/// One pull's lease; released on drop.
#[derive(Debug)]
pub struct Lease {
    id: u64,
    leases: Arc<Leases>,
}

impl Leases {
    pub fn acquire(self: &Arc<Self>) -> Lease {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, HashSet::new());
        Lease {
            id,
            leases: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, HashSet<String>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the table (no lease can be added meanwhile) and gives every leased key.
    pub fn hold(&self) -> HeldLeases<'_> {
        HeldLeases { guard: self.lock() }
    }
}

/// The lease table, held by garbage collection.
#[derive(Debug)]
pub struct HeldLeases<'a> {
    guard: MutexGuard<'a, HashMap<u64, HashSet<String>>>,
}

impl HeldLeases<'_> {
    pub fn contains(&self, key: &str) -> bool {
        self.guard.values().any(|s| s.contains(key))
    }
}

impl Lease {
    /// Protects an object (a digest or chain id) from collection for this lease's life.
    pub fn add(&self, key: impl Into<String>) {
        if let Some(set) = self.leases.lock().get_mut(&self.id) {
            set.insert(key.into());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.id);
    }
}

/// Per-key async locks that disappear when nobody holds or waits for them.
#[derive(Debug, Default)]
pub struct Inflight {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a key's work is in progress.
#[derive(Debug)]
pub struct InflightGuard<'a> {
    owner: &'a Inflight,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Inflight {
    pub async fn lock(&self, key: &str) -> InflightGuard<'_> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        InflightGuard {
            owner: self,
            key: key.to_owned(),
            lock: Some(guard),
        }
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        drop(self.lock.take());
        let mut map = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_protect_until_dropped() {
        let l = Arc::new(Leases::default());
        let a = l.acquire();
        a.add("sha256:x");
        assert!(l.hold().contains("sha256:x"));
        drop(a);
        assert!(!l.hold().contains("sha256:x"));
    }

    #[tokio::test]
    async fn inflight_serialises_and_cleans_up() {
        let f = Inflight::default();
        let g = f.lock("k").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), f.lock("k"))
                .await
                .is_err()
        );
        drop(g);
        drop(f.lock("k").await);
        assert!(f.locks.lock().unwrap().is_empty());
    }
}
