//! berth-e2e: end-to-end harness for berth.
//!
//! - [`daemon::Daemon`]: a real berthd on a temporary root, socket and run dir, stopped and
//!   checked for leftovers on drop
//! - [`registry::Registry`]: Debian's docker-registry on 127.0.0.1, open or behind basic auth
//! - [`images`]: test images built from busybox-static, pushed over the distribution API
//! - [`cri::Cri`]: a tonic CRI client over the unix socket
//! - [`require`]: prerequisites that skip loudly, or fail under `BERTH_E2E_REQUIRED=1`
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod env;
pub mod http;
pub mod images;
pub mod kit;
pub mod listbench;
pub mod net;
pub mod proxy;
pub mod registry;
pub mod require;
pub mod scale;
pub mod soak;
pub mod stream;
pub mod suite;
pub mod token;

pub use cri::Cri;
pub use daemon::{Daemon, DaemonOptions};
pub use registry::Registry;
