//! `Rollback`: what a multi-step create undoes when a later step fails, in reverse order.
//!
//! A create pushes an undo step after each step that changed the host. On success it
//! disarms the guard; on an error it awaits [`Rollback::run`]. Dropped while armed (the
//! call's future was cancelled — a client that hung up — or a panic), it spawns the steps
//! on the runtime, so that no path leaves a half-made object behind.

use std::future::Future;
use std::pin::Pin;

type AsyncStep = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Undo steps, run last-first unless disarmed.
#[derive(Default)]
pub(crate) struct Rollback {
    steps: Vec<AsyncStep>,
}

impl std::fmt::Debug for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollback")
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl Rollback {
    pub(crate) fn new() -> Rollback {
        Rollback::default()
    }

    /// Adds a step that needs no waiting.
    pub(crate) fn push(&mut self, f: impl FnOnce() + Send + 'static) {
        self.steps.push(Box::new(move || {
            f();
            Box::pin(async {})
        }));
    }

    /// Adds a step that awaits (a teardown).
    pub(crate) fn push_async<F>(&mut self, f: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.steps.push(Box::new(move || Box::pin(f())));
    }

    /// The create succeeded: nothing is undone.
    pub(crate) fn disarm(mut self) {
        self.steps.clear();
    }

    /// The create failed: undoes every step, last first, and returns when they are done.
    pub(crate) async fn run(mut self) {
        let steps = std::mem::take(&mut self.steps);
        run_steps(steps).await;
    }
}

async fn run_steps(mut steps: Vec<AsyncStep>) {
    while let Some(step) = steps.pop() {
        step().await;
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        let steps = std::mem::take(&mut self.steps);
        if steps.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(run_steps(steps));
            }
            // No runtime (a synchronous caller): run them here, waiting on a small one.
            Err(_) => {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(run_steps(steps));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn log() -> Arc<Mutex<Vec<&'static str>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    #[tokio::test]
    async fn steps_run_last_first_on_failure_and_not_after_success() {
        let l = log();
        let mut r = Rollback::new();
        let (a, b) = (l.clone(), l.clone());
        r.push(move || a.lock().unwrap().push("first"));
        r.push_async(move || async move { b.lock().unwrap().push("second") });
        r.run().await;
        assert_eq!(*l.lock().unwrap(), vec!["second", "first"]);

        let l = log();
        let mut r = Rollback::new();
        let a = l.clone();
        r.push(move || a.lock().unwrap().push("x"));
        r.disarm();
        assert!(l.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_guard_still_undoes() {
        let l = log();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut r = Rollback::new();
            let a = l.clone();
            r.push_async(move || async move {
                a.lock().unwrap().push("undone");
                let _ = tx.send(());
            });
            // Dropped armed, as when a cancelled call's future is dropped.
        }
        rx.await.unwrap();
        assert_eq!(*l.lock().unwrap(), vec!["undone"]);
    }
}
