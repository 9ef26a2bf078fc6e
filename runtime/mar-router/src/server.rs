//! The accept loop, the top of the router: every connection starts on the HTTP/1.1 fast path
//! (`fast_path/`) and moves to the general hyper path (`general_path.rs`) for HTTP/2 (prior
//! knowledge or ALPN) and everything the fast path hands over; per-connection errors stay per
//! connection, and shutdown drains in-flight requests.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Admitted};
use crate::fast_path::{self, Outcome};
use crate::forwarding::Inbound;
use crate::general_path::GeneralPath;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::shared::{ServerLimits, Shared, Timeouts};
use crate::table::{InProcessTarget, RouteTable};
use crate::tracked::LogSink;

/// One router thread's proxy: the state its connections share and the general path's client.
/// Cheap to share behind an `Arc`.
pub struct Proxy {
    pub(crate) shared: Shared,
    general: GeneralPath,
}

impl Proxy {
    /// A proxy over `table`, sending platform requests to `platform`; access log lines go to
    /// `log` (`None`: no access log). `closing` is cancelled at shutdown: open WebSockets then
    /// get a Close (1012).
    pub fn new(
        table: Arc<RouteTable>,
        platform: InProcessTarget,
        log: Option<LogSink>,
        metrics: Arc<Metrics>,
        closing: CancellationToken,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            general: GeneralPath::new(&timeouts),
            shared: Shared {
                table,
                platform,
                pool: Pool::default(),
                log,
                metrics,
                closing,
                sessions: TaskTracker::new(),
                timeouts,
                https_port: None,
            },
        }
    }

    /// The port of the router's HTTPS listener, where apps' redirects to HTTPS from plain
    /// requests are pointed when they would go to a port that serves no HTTPS.
    pub fn with_https_port(mut self, port: Option<u16>) -> Self {
        self.shared.https_port = port;
        self
    }
}

/// Serves `listener` until `shutdown` fires, then lets in-flight requests finish for up to
/// `grace` before returning. With `tls`, every connection is a TLS one (h2 or http/1.1 by
/// ALPN).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    grace: Duration,
    limits: ServerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admission: Arc<Admission>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("listener has no address: {e}");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(limits.max_header_bytes as u32);
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                // Told why without reading anything (TLS clients get nothing they could read
                // before a handshake), then closed.
                if tls.is_none() {
                    let _ = stream.try_write(crate::admission::refusal(why));
                }
                continue;
            }
        };
        // Small request/response pairs should not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let inbound = Inbound {
            client: peer,
            local,
            tls: tls.is_some(),
            fd: Some(std::os::fd::AsRawFd::as_raw_fd(&stream)),
        };
        let general = General {
            proxy: proxy.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            inbound,
            admitted,
        };
        let shutdown = shutdown.clone();
        let tracker = connections.clone();
        match &tls {
            None => {
                connections.spawn(async move {
                    general
                        .serve_fast(stream, limits, &shutdown, &tracker)
                        .await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // The handshake gets the same time limit as a request head.
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        general.serve(tls_stream).await;
                        return;
                    }
                    general
                        .serve_fast(tls_stream, limits, &shutdown, &tracker)
                        .await;
                });
            }
        }
    }
    drop(listener);
    connections.close();
    proxy.shared.sessions.close();
    let drained = async {
        graceful.shutdown().await;
        connections.wait().await;
        proxy.shared.sessions.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// The general path: hyper serves the connection (HTTP/2, and whatever the HTTP/1.1 fast
/// path hands over) with the general path's handler, under graceful shutdown.
struct General {
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    inbound: Inbound,
    /// The connection's place under the caps, held until it closes.
    admitted: Admitted,
}

impl General {
    /// Serves a connection on the HTTP/1.1 fast path, then wherever it leads.
    async fn serve_fast<IO>(
        self,
        io: IO,
        limits: ServerLimits,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if !limits.fast_path {
            return self.serve(io).await;
        }
        let fast = fast_path::serve(&self.proxy.shared, io, self.inbound, limits, shutdown);
        match fast.await {
            Outcome::Done => {}
            Outcome::HandOff(io) => self.serve(io).await,
            // Its own task: this one's state is sized for the HTTP path, and an idle WebSocket
            // should hold only what the relay needs.
            Outcome::WebSocket(ws) => {
                let (proxy, admitted) = (self.proxy, self.admitted);
                tracker.spawn(async move {
                    ws.run(&proxy.shared).await;
                    drop(admitted);
                });
            }
        }
    }

    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (proxy, inbound) = (self.proxy, self.inbound);
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            async move {
                let resp = proxy.general.handle(&proxy.shared, req, inbound).await;
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!("connection from {}: {e}", inbound.client);
        }
    }
}
