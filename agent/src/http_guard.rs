//! berthd's listeners against floods. The CRI socket: accept errors (EMFILE, ENFILE,
//! ENOBUFS) back off instead of spinning. Every HTTP listener (metrics, streaming), against
//! clients that hold connections without finishing them: a cap on open connections (more
//! are closed at once, so that a flood cannot take berthd to its descriptor limit and
//! starve the CRI socket), a deadline for a request's headers (also the idle limit of a
//! kept-alive connection), a deadline for the whole HTTP exchange, and accept errors that
//! back off too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed when accepted.
    pub max_connections: usize,
    /// Time for a request's headers to arrive, from when the server starts waiting for
    /// them (so also the idle limit between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time for the whole HTTP exchange on one connection (a stream upgraded from it is
    /// no longer counted: it has its own idle timeout).
    pub connection_timeout: Duration,
}

/// An HTTP/1 connection builder with the header deadline set.
pub fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    b
}

/// Counts of one listener, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub rejected: AtomicU64,
    pub accept_errors: AtomicU64,
    pub timed_out: AtomicU64,
}

/// Accepts connections until the task is dropped, serving each with `serve` within the
/// listener's limits.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    counters: Arc<Counters>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::ZERO;
    let mut last_warning: Option<Instant> = None;
    let mut warn = |what: &str, detail: String| {
        // One warning per 10 s at most: a flood must not flood the log too.
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(listener = name, "{what}: {detail}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            Err(e) => {
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                warn(
                    "accept failed",
                    format!("{e}; retrying in {} ms", backoff.as_millis()),
                );
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn(
                "connection limit reached",
                format!(
                    "{} connections open; closing the one from {peer}",
                    limits.max_connections
                ),
            );
            drop(stream);
            continue;
        };
        let conn = serve(stream, peer);
        let counters = counters.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(limits.connection_timeout, conn)
                .await
                .is_err()
            {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = name, %peer, "connection closed at its deadline");
            }
            drop(permit);
        });
    }
}

/// The CRI socket's connections, for tonic: accept errors (EMFILE, ENFILE, ENOBUFS) wait
/// with a growing pause (10 ms to 1 s) and a warning at most every 10 s, where tonic's own
/// loop would retry at once and spin a core while the process is out of descriptors.
pub fn unix_incoming(
    listener: tokio::net::UnixListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    struct State {
        listener: tokio::net::UnixListener,
        backoff: Duration,
        last_warning: Option<Instant>,
    }
    futures_util::stream::unfold(
        State {
            listener,
            backoff: Duration::ZERO,
            last_warning: None,
        },
        |mut st| async move {
            loop {
                match st.listener.accept().await {
                    Ok((s, _)) => {
                        st.backoff = Duration::ZERO;
                        return Some((Ok(s), st));
                    }
                    Err(e) => {
                        st.backoff = (st.backoff * 2)
                            .clamp(Duration::from_millis(10), Duration::from_secs(1));
                        if st
                            .last_warning
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                        {
                            tracing::warn!(listener = "cri", error = %e, "accept failed; retrying in {} ms", st.backoff.as_millis());
                            st.last_warning = Some(Instant::now());
                        }
                        tokio::time::sleep(st.backoff).await;
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: Limits) -> (SocketAddr, Arc<Counters>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        tokio::spawn(accept_loop(l, "test", limits, c, move |stream, _| {
            let b = http1_builder(&limits);
            async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = b
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            }
        }));
        (addr, counters)
    }

    #[tokio::test]
    async fn half_sent_requests_are_closed_and_the_cap_holds() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(5),
        };
        let (addr, counters) = server(limits).await;
        // Four slow clients hold every slot; a fifth is closed at once.
        let mut slow = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            slow.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the fifth connection is closed");
        assert!(counters.rejected.load(Ordering::Relaxed) >= 1);
        // The header deadline closes the slow ones, and the slots come back.
        for s in &mut slow {
            let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            assert!(
                r.is_ok(),
                "a half-sent request is closed at the header deadline"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        ok.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}
