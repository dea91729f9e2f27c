//! A short soak (the long one is `berth-bench soak`): lifecycles, cold pulls and ExecSyncs
//! at once, then nothing of the removed objects remains and berthd is back where it began.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::images::catalog;
use berth_e2e::require;
use berth_e2e::soak::{SoakOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_leaves_nothing_and_does_not_grow() {
    if !(require::root()
        && catalog::available()
        && berth_e2e::registry::registry_binary().is_some())
    {
        return;
    }
    let report = run(SoakOptions {
        lifecycles: 120,
        pulls: 12,
        execs: 300,
        concurrency: 4,
    })
    .await;
    eprintln!("{report:?}");
    let failures = report.failures(16 * 1024);
    assert!(failures.is_empty(), "{failures:#?}");
}
