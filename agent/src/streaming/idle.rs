//! The idle timeout of streaming connections (kubelet's and containerd's
//! `stream_idle_timeout`, 4 h by default): a connection on which nothing has been read or
//! written for that long fails with TimedOut, which ends its session as a client hanging
//! up would (an exec'd process is killed, port forwards close).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A transport that fails once idle for `idle` (never, without one).
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    idle: Option<Duration>,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: Option<Duration>) -> IdleTimeout<T> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            idle,
            last: now,
            timer: idle.map(|d| Box::pin(tokio::time::sleep_until(now + d))),
        }
    }

    /// Ready(TimedOut) once idle for too long; otherwise arms the timer for the moment it
    /// would be.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let (Some(idle), Some(timer)) = (self.idle, self.timer.as_mut()) else {
            return Poll::Pending;
        };
        loop {
            let deadline = self.last + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("streaming connection idle for {idle:?}"),
                ));
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_expired(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.last = Instant::now();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fails_only_after_being_idle() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = IdleTimeout::new(a, Some(Duration::from_secs(10)));
        // Traffic keeps it alive.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            t.read_exact(&mut one).await.unwrap();
        }
        // Our own writes count too.
        tokio::time::sleep(Duration::from_secs(6)).await;
        t.write_all(b"y").await.unwrap();
        let start = Instant::now();
        let mut one = [0u8; 1];
        let e = t.read(&mut one).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed().as_secs(), 10);
    }
}
