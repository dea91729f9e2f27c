//! The per-pod monitor: a small single-threaded process per pod, started as a fresh exec of
//! berthd (`berthd monitor …`), never a fork of the multi-threaded daemon.
//!
//! It anchors the pod's shared namespaces, is the subreaper and parent of the pod's
//! containers and exec processes, copies their output into CRI log files, and records every
//! exit to disk before reporting it, so that nothing is lost while berthd is down. It talks
//! to berthd over a unix socket in the pod's run directory with length-prefixed
//! `berth.monitor.v1` frames (see `proto/berth/monitor.proto`).
//!
//! - [`entry`]: the monitor process itself (`berthd monitor`);
//! - [`client`]: berthd's side: start a monitor, talk to it, watch its events;
//! - [`frame`]: the wire framing both ends use;
//! - [`cri_log`]: the kubelet log format writer.
//! - `session`: interactive exec and attach sessions (CRI Exec, Attach).
//!
//! - [`wire`]: the typed contract (specs, error kinds, exit records) and its protocol-1 forms.
//!
//! What survives a berthd restart: the monitor and its containers keep running; exits are
//! in `<pod dir>/exits/<container>.exit` (`.json` from monitors of protocol 1); berthd
//! reconnects to `<pod dir>/monitor.sock`.

pub mod client;
pub mod cri_log;
pub mod entry;
mod execsync;
pub mod frame;
mod oom;
pub mod podinit;
mod reap;
mod session;
mod start;
mod stdio;
pub mod wire;
