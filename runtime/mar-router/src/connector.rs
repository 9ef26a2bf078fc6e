//! The general path's connections to apps. An app may answer a request before it has read
//! the whole body (a 413 for an upload it refuses) and close the connection: the kernel then
//! resets it, and the next write of the body fails. hyper's client gives up on the exchange at
//! that write error even though the app's answer is waiting in the receive buffer. Here a
//! write that fails because the app is gone is taken as sent, so hyper goes on to read the
//! answer; when there is none, the read fails and the request still ends in H13. Such a
//! connection is never reused: after a reset, reads end in an error and hyper drops it.
//!
//! A write that makes no progress for the idle window (the app stopped reading without
//! answering) fails with [`AppStalled`], so the request ends instead of waiting forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::idle::IdleWindow;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a write to an app failed: it took nothing for the idle window.
#[derive(Debug, thiserror::Error)]
#[error("the app stopped reading the request")]
pub(crate) struct AppStalled;

/// [`HttpConnector`], with connections that outlive the app's reading side; writes get the
/// idle window (the `Duration`).
#[derive(Clone)]
pub(crate) struct AppConnector(pub HttpConnector, pub std::time::Duration);

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
        let idle = self.1;
        Box::pin(async move {
            connecting.await.map(|io| AppConnection {
                io,
                write_gone: false,
                stall: IdleWindow::new(idle),
            })
        })
    }
}

/// A connection to an app instance; see the module docs.
pub(crate) struct AppConnection {
    io: TokioIo<TcpStream>,
    /// The app is gone: further writes are dropped.
    write_gone: bool,
    /// How long a write may wait for the app to take bytes.
    stall: IdleWindow,
}

/// Errors that mean the peer closed or reset its side.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl AppConnection {
    /// A write's outcome, `n` being what it offered: taken as written when the app is gone,
    /// an [`AppStalled`] error when it waited for the idle window.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        n: T,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Ok(v)) => {
                self.stall.progressed();
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.write_gone = true;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.stall.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, AppStalled)));
                }
                Poll::Pending
            }
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
        self.settle(cx, r, buf.len())
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
        self.settle(cx, r, n)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_gone {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.settle(cx, r, ())
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
