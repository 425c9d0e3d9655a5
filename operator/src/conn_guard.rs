//! Connection limits for the result endpoint: at most so many open connections, each closed
//! when it sends nothing for a while or lives too long.
//!
//! The result endpoint is reachable from sandbox Pods (and, without the chart's
//! NetworkPolicy, from anything in the cluster). A client that opens connections and then
//! trickles bytes must not be able to make the operator hold unbounded memory or sockets:
//! [`GuardedListener`] stops accepting while [`Limits::max_connections`] are open (the rest
//! wait in the kernel's backlog), and every connection ends with a timeout error when no byte
//! arrives for [`Limits::idle`] or it has been open for [`Limits::lifetime`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits of [`GuardedListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest time a connection may go without sending a byte.
    pub idle: Duration,
    /// Longest time a connection may stay open.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            idle: Duration::from_secs(15),
            lifetime: Duration::from_secs(120),
        }
    }
}

/// A listener that enforces [`Limits`] on the connections it hands out.
pub struct GuardedListener<L> {
    inner: L,
    permits: Arc<Semaphore>,
    limits: Limits,
}

impl<L> GuardedListener<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, limits: Limits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }
}

impl<L> axum::serve::Listener for GuardedListener<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Wait for a free slot before accepting: while the endpoint is full, new connections
        // queue in the kernel instead of costing memory here.
        let permit = match Arc::clone(&self.permits).acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = self.inner.accept().await;
        (GuardedIo::new(io, permit, self.limits), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of a [`GuardedListener`]: its slot is released when it is dropped.
pub struct GuardedIo<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    lifetime_timer: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit, limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            _permit: permit,
            idle: limits.idle,
            idle_timer: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            lifetime_timer: Box::pin(tokio::time::sleep_until(now + limits.lifetime)),
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lifetime_timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(timed_out("connection open too long")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.idle_timer.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(timed_out("connection idle too long")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn guarded(
        limits: Limits,
    ) -> (
        GuardedListener<tokio::net::TcpListener>,
        std::net::SocketAddr,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        (GuardedListener::new(l, limits), addr)
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_time() {
        let (mut l, addr) = guarded(Limits {
            idle: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut io, _) = l.accept().await;
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn bytes_keep_a_connection_alive_until_its_lifetime() {
        let (mut l, addr) = guarded(Limits {
            idle: Duration::from_millis(300),
            lifetime: Duration::from_millis(900),
            ..Limits::default()
        })
        .await;
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut io, _) = l.accept().await;
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            loop {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut buf = [0u8; 8];
        let err = loop {
            match io.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Kept alive past several idle periods by the trickle, ended by the lifetime.
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        writer.abort();
    }

    #[tokio::test]
    async fn no_more_than_max_connections_are_accepted_at_once() {
        let (mut l, addr) = guarded(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let _c: Vec<_> =
            futures::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr))).await;
        let first = l.accept().await;
        let _second = l.accept().await;
        let third = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted while two were open"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), l.accept()).await;
        assert!(third.is_ok(), "the freed slot was not reused");
    }
}
