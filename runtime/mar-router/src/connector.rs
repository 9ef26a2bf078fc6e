//! The general path's connections to apps. An app may answer a request before it has read
//! the whole body (a 413 for an upload it refuses) and close the connection: the kernel then
//! resets it, and the next write of the body fails. hyper's client gives up on the exchange at
//! that write error even though the app's answer is waiting in the receive buffer. Here a
//! write that fails because the app is gone is taken as sent, so hyper goes on to read the
//! answer; when there is none, the read fails and the request still ends in H13.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// [`HttpConnector`], with connections that outlive the app's reading side.
#[derive(Clone)]
pub(crate) struct AppConnector(pub HttpConnector);

impl tower_service::Service<Uri> for AppConnector {
    type Response = AppConnection;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<AppConnection, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            connecting.await.map(|io| AppConnection {
                io,
                write_gone: false,
            })
        })
    }
}

/// A connection to an app instance; see the module docs.
pub(crate) struct AppConnection {
    io: TokioIo<TcpStream>,
    /// The app stopped reading: further writes are dropped.
    write_gone: bool,
}

/// Errors that mean the peer closed or reset its side.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl AppConnection {
    /// `n` bytes "written" when the app is gone, else the write's own result.
    fn forgive(&mut self, r: Poll<io::Result<usize>>, n: usize) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.write_gone = true;
                Poll::Ready(Ok(n))
            }
            r => r,
        }
    }
}

impl Read for AppConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for AppConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_gone {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.forgive(r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.iter().map(|b| b.len()).sum();
        if self.write_gone {
            return Poll::Ready(Ok(n));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.forgive(r, n)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_gone {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.write_gone = true;
                Poll::Ready(Ok(()))
            }
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(Err(e)) if peer_gone(&e) => Poll::Ready(Ok(())),
            r => r,
        }
    }
}

impl Connection for AppConnection {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
