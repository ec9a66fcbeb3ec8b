//! Accepted connections: `TCP_NODELAY` on (tonic ignores its own setting
//! for a caller-supplied listener), and a hard close at the drain deadline.
//!
//! tonic's graceful shutdown sends GOAWAY and then waits for every open call,
//! forever if a server stream never ends. When the deadline passes, every
//! [`Conn`] fails its reads and writes, hyper drops the connection with the
//! calls on it, and the server's connection tasks end instead of lingering.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections accepted on `listener`; all of them fail once `force_close` fires.
pub(crate) fn accept(
    listener: TcpListener,
    force_close: CancellationToken,
) -> impl Stream<Item = io::Result<Conn>> + Send {
    TcpListenerStream::new(listener).map(move |accepted| {
        let io = accepted?;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set tcp_nodelay");
        }
        Ok(Conn {
            io,
            closed: Box::pin(force_close.clone().cancelled_owned()),
        })
    })
}

/// A TCP connection that can be closed from outside.
pub(crate) struct Conn {
    io: TcpStream,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Conn {
    /// `true` once the deadline passed. When not, registers the task to be
    /// woken when it does, so an idle connection notices too.
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        self.closed.as_mut().poll(cx).is_ready()
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "shutdown deadline reached",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_blocked_read_fails_when_the_deadline_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let force_close = CancellationToken::new();
        let mut conns = std::pin::pin!(accept(listener, force_close.clone()));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut conn = conns.next().await.expect("accepted").expect("ok");
        assert!(conn.io.nodelay().expect("nodelay"));

        client.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");

        let read = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            conn.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        force_close.cancel();
        let err = tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .expect("woken")
            .expect("joined")
            .expect_err("closed");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
