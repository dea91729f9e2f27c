//! Signals, readiness notification and the shutdown sequence.
//!
//! SIGTERM or SIGINT: stop accepting, let in-flight calls finish within the grace period,
//! remove the socket, exit 0. Containers keep running: their monitors own them.

use std::io;
use std::os::unix::net::UnixDatagram;

use tokio::signal::unix::{SignalKind, signal};

/// Resolves with the name of the first termination signal received.
pub async fn terminated() -> io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Sends a state line to systemd when `NOTIFY_SOCKET` is set (sd_notify protocol).
/// Returns Ok(false) when there is no notify socket.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}
