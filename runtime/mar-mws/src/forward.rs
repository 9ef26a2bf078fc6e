//! Client frames forwarded to an app (beyond the original MWS, which ignored them): when a
//! gateway's configuration names a `forward` path, each text or binary frame a client sends
//! becomes one `POST PATH` to the app attached to the gateway, through the router (so the
//! app's access log, limits and WASM handlers apply as to any request).
//!
//! The request says where it came from: `X-MWS-Gateway` (the gateway's id), `X-MWS-Socket`
//! (the socket's id), `X-MWS-Tags` (its tags, a JSON array) and `Authorization: Bearer
//! SECRET` with the gateway's secret, which the attached app has as `MWS_SECRET`, so it can
//! tell the gateway from anyone else who calls the same path. The body is the frame
//! (`text/plain; charset=utf-8` or `application/octet-stream`).
//!
//! Delivery is at most once and in order per socket: one request at a time per socket over
//! one kept-alive connection, each waiting at most [`REQUEST_TIMEOUT`]. A frame the app
//! refused or that could not be delivered is dropped and counted, never retried (a client's
//! frame is an event, as Pusher's client events are). Each socket's queue is bounded: a
//! client that sends faster than the app takes its frames is closed with 1008 rather than
//! buffered without end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Frames a socket may have waiting for the app before the client is closed as too fast.
pub const QUEUE: usize = 64;

/// How long one forwarded frame may take the app.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a gateway forwards its clients' frames: a path of the attached app (or of the named
/// one, when the gateway is attached to several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The request path, from `/`.
    pub path: String,
    /// The app to send to, when the gateway is attached to more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl Forward {
    /// Checks a configuration's `forward` value: `{"path": "/…", "app"?: "…"}`.
    pub fn parse(v: &serde_json::Value) -> Result<Self, &'static str> {
        let f: Forward = serde_json::from_value(v.clone())
            .map_err(|_| "must be {\"path\": \"/…\"} with an optional \"app\"")?;
        let ok_char = |c: char| c.is_ascii_graphic() && c != '#' && c != '?';
        if !f.path.starts_with('/') || f.path.len() > 1024 || !f.path.chars().all(ok_char) {
            return Err("path must start with / and hold only printable ASCII, no query");
        }
        Ok(f)
    }
}

/// Where forwarded frames go now: the router's address and the app's Host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// An address of the router's plain HTTP listener.
    pub addr: SocketAddr,
    /// The Host header that reaches the app.
    pub host: String,
}

/// Finds the target of a gateway's forward (its id, and `forward.app`), or says why there is
/// none: the composition root knows which apps a gateway is attached to; this crate does not.
pub type Resolve = Arc<dyn Fn(&str, Option<&str>) -> Result<Target, String> + Send + Sync>;

/// A frame from a client, for the app.
#[derive(Debug)]
pub struct Frame {
    /// Its payload.
    pub body: Bytes,
    /// A text frame (else binary).
    pub text: bool,
}

/// What one socket's forwarding is for.
pub(crate) struct Origin {
    pub gateway: String,
    pub secret: String,
    pub socket: String,
    pub tags: Vec<String>,
}

/// Counts of forwarded frames, per gateway.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Frames the app answered with a 2xx.
    pub delivered: AtomicU64,
    /// Frames dropped: no target, a refused connection, a timeout or a non-2xx answer.
    pub dropped: AtomicU64,
}

/// Starts the task that forwards one socket's frames, in order; it ends when the sender is
/// dropped (the session ended).
pub(crate) fn spawn(
    forward: Forward,
    origin: Origin,
    resolve: Resolve,
    stats: Arc<ForwardStats>,
    tracker: &tokio_util::task::TaskTracker,
    executor: &tokio::runtime::Handle,
) -> mpsc::Sender<Frame> {
    let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
    let tags = serde_json::to_string(&origin.tags).unwrap_or_else(|_| "[]".to_owned());
    tracker.spawn_on(
        async move {
            let mut conn: Option<(Target, SendRequest<Full<Bytes>>)> = None;
            while let Some(frame) = rx.recv().await {
                let ok = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    send(&mut conn, &forward, &origin, &tags, &resolve, frame),
                )
                .await;
                match ok {
                    Ok(Ok(())) => stats.delivered.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(why)) => {
                        tracing::debug!(gateway = %origin.gateway, "forward dropped: {why}");
                        conn = None;
                        stats.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => {
                        conn = None;
                        stats.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        },
        executor,
    );
    tx
}

/// Sends one frame, connecting (or reconnecting) first when needed.
async fn send(
    conn: &mut Option<(Target, SendRequest<Full<Bytes>>)>,
    forward: &Forward,
    origin: &Origin,
    tags: &str,
    resolve: &Resolve,
    frame: Frame,
) -> Result<(), String> {
    // Resolved for every frame: a detach, a destroyed app or a new router port takes effect
    // at once (the lookup is in memory).
    let target = resolve(&origin.gateway, forward.app.as_deref())?;
    let reuse = matches!(conn, Some((t, s)) if *t == target && !s.is_closed());
    if !reuse {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some((target.clone(), sender));
    }
    let Some((_, sender)) = conn.as_mut() else {
        return Err("no connection".to_owned());
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(&forward.path)
        .header(header::HOST, &target.host)
        .header(
            header::CONTENT_TYPE,
            if frame.text {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            },
        )
        .header(header::AUTHORIZATION, format!("Bearer {}", origin.secret))
        .header("x-mws-gateway", &origin.gateway)
        .header("x-mws-socket", &origin.socket)
        .header("x-mws-tags", tags)
        .body(Full::new(frame.body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read the answer to its end, so the connection can carry the next frame.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the app answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forward_paths_are_checked() {
        let f = Forward::parse(&json!({"path": "/mws/in"})).unwrap();
        assert_eq!(f.path, "/mws/in");
        assert_eq!(f.app, None);
        let f = Forward::parse(&json!({"path": "/in", "app": "todo"})).unwrap();
        assert_eq!(f.app.as_deref(), Some("todo"));
        for bad in [
            json!("/in"),
            json!({"path": "in"}),
            json!({"path": "/a b"}),
            json!({"path": "/a?x=1"}),
            json!({"path": "/a\r\nHost: evil"}),
            json!({"app": "todo"}),
        ] {
            assert!(Forward::parse(&bad).is_err(), "{bad}");
        }
    }
}
