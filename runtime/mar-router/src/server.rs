//! The accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, with upgrades,
//! surviving per-connection errors, and draining in-flight requests on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Proxy;

/// Limits that protect the listener from slow or oversized request heads.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client must send its request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); past it the answer is 431.
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
        }
    }
}

/// Serves `listener` until `shutdown` fires, then lets in-flight requests finish for up to
/// `grace` before returning. With `tls`, every connection is a TLS one (h2 or http/1.1 by
/// ALPN).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    grace: Duration,
    limits: ServerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("listener has no address: {e}");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
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
        // Small request/response pairs should not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (proxy, builder, graceful) = (proxy.clone(), builder.clone(), &graceful);
        let tls_flag = tls.is_some();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let inbound = crate::Inbound {
                client: peer,
                local,
                tls: tls_flag,
            };
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, inbound).await) }
        });
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // The handshake gets the same time limit as a request head.
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("TLS connection from {peer}: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}
