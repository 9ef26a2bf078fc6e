//! What both paths share: the router thread's state ([`Shared`]: route table, the pool of idle
//! app connections, access log, metrics, timeouts), the context of one exchange ([`Ctx`]) and
//! its accounting (access log records, error pages from the one failure table, the count of
//! WebSocket sessions), and the choice of another instance for a retry.
//!
//! Boundary: the accept loop (`server.rs`) calls the two paths (`fast_path`, `general_path`),
//! and both call down into this module, never into each other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use mar_core::AppName;
use tokio_util::sync::CancellationToken;

use crate::failure::{Ending, Facts, Failure};
use crate::forwarding::Inbound;
use crate::metrics::{AppMetrics, Metrics};
use crate::pool::Pool;
use crate::relay::{self, Ended};
use crate::table::{InFlight, InProcessTarget, Resolution, Resolved, RouteTable, Upstream};
use crate::tracked::{LogSink, Record};
use crate::{Body, error_response};

/// Router-wide timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time allowed for an app to start its response once it has the whole request
    /// (Heroku's H12 after 30 s).
    pub first_byte: Duration,
    /// Longest pause inside a streamed response, and inside a request body's upload (H28).
    pub response_idle: Duration,
    /// Time allowed to open a connection to an instance.
    pub connect: Duration,
    /// How long a request for an app whose web process is booting waits for it to come up
    /// before it gets H20 (Heroku's router queues such requests for 75 s); zero answers H20 at
    /// once.
    pub boot_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(30),
            response_idle: Duration::from_secs(55),
            connect: Duration::from_secs(5),
            boot_wait: Duration::from_secs(30),
        }
    }
}

/// Limits that protect the listener from slow or oversized request heads.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A client must send its request head within this time (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); past it the answer is 431.
    pub max_header_bytes: usize,
    /// Whether plain HTTP/1.1 requests for apps behind ports take the fast path. Off, every
    /// request goes the general way: slower, and answered the same (the parity test checks
    /// that), so it is a way to rule the fast path out when a proxy problem is suspected.
    pub fast_path: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            fast_path: true,
        }
    }
}

/// One router thread's state, shared by its connections.
pub(crate) struct Shared {
    pub table: Arc<RouteTable>,
    /// The platform's handler: the API, git and health on the bare domain.
    pub platform: InProcessTarget,
    /// Idle connections to instances, for the HTTP/1.1 fast path.
    pub pool: Pool,
    pub log: Option<LogSink>,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown.
    pub closing: CancellationToken,
    /// WebSocket sessions relayed after an upgrade, which outlive the request that started
    /// them: the server waits for them at shutdown, as for connections.
    pub sessions: tokio_util::task::TaskTracker,
    pub timeouts: Timeouts,
    /// The port of the router's HTTPS listener, if it has one: apps' redirects to HTTPS from
    /// plain requests are pointed at it (`forwarding::https_redirect`).
    pub https_port: Option<u16>,
}

/// Facts about the request kept for the access log and error pages.
pub(crate) struct Ctx {
    /// The app, or the platform's name for its own requests.
    pub app: AppName,
    pub method: String,
    pub path: String,
    pub host: String,
    pub rid: String,
    pub json: bool,
    pub start: Instant,
    pub inbound: Inbound,
}

impl Shared {
    /// For a redirect (`status` 3xx) answering a plain request while the router has an
    /// HTTPS listener: the request's `Host` and that listener's port, which its `Location` is
    /// pointed at (see `forwarding::https_redirect`).
    pub fn redirect_target<'a>(&self, ctx: &'a Ctx, status: u16) -> Option<(&'a str, u16)> {
        self.https_port
            .filter(|_| !ctx.inbound.tls && (300..400).contains(&status))
            .map(|port| (ctx.host.as_str(), port))
    }

    /// The access log record of a request whose context is no longer needed.
    pub fn record_owned(&self, ctx: Ctx, dyno: &str, status: u16) -> Record {
        Record {
            sink: self.log.clone(),
            metrics: self.metrics.app(&ctx.app),
            fwd: ctx.inbound.client.ip().to_string(),
            protocol: if ctx.inbound.tls { "https" } else { "http" },
            service: ctx.start.elapsed(),
            start: ctx.start,
            app: ctx.app,
            method: ctx.method,
            path: ctx.path,
            host: ctx.host,
            request_id: ctx.rid,
            dyno: dyno.to_owned(),
            status,
            bytes_in: 0,
        }
    }

    /// The access log record of a request.
    pub fn record(&self, ctx: &Ctx, dyno: &str, status: u16) -> Record {
        Record {
            sink: self.log.clone(),
            metrics: self.metrics.app(&ctx.app),
            app: ctx.app.clone(),
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            host: ctx.host.clone(),
            request_id: ctx.rid.clone(),
            fwd: ctx.inbound.client.ip().to_string(),
            dyno: dyno.to_owned(),
            protocol: if ctx.inbound.tls { "https" } else { "http" },
            start: ctx.start,
            service: ctx.start.elapsed(),
            status,
            bytes_in: 0,
        }
    }

    /// A failure of the router's: logged with its code, answered with the error page from the
    /// one failure table. A client that is gone gets its log line and an empty 499.
    pub fn fail(&self, ctx: &Ctx, failure: Failure, dyno: &str, max_body: u64) -> Response<Body> {
        let page = failure.page(&Facts {
            dyno,
            first_byte: self.timeouts.first_byte,
            idle: self.timeouts.response_idle,
            max_body,
        });
        self.record(ctx, dyno, page.status.as_u16())
            .finish(Some((page.code, page.desc)), 0);
        if !failure.answers() {
            let mut gone = Response::new(crate::full(bytes::Bytes::new()));
            *gone.status_mut() = page.status;
            return gone;
        }
        error_response(
            page.status,
            page.code,
            page.desc,
            &page.detail,
            &ctx.rid,
            ctx.json,
        )
    }

    /// An app that cannot take traffic now (H10, H14, H20...), logged and answered.
    pub fn unavailable(&self, ctx: &Ctx, u: &crate::Unavailable) -> Response<Body> {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        self.record(ctx, "", status.as_u16())
            .finish(Some((u.code, u.desc)), 0);
        error_response(status, u.code, u.desc, &u.hint, &ctx.rid, ctx.json)
    }

    /// Another upstream of the same app than `tried`, for a retry.
    pub fn another(&self, host: &str, tried: &Upstream) -> Option<(Upstream, InFlight)> {
        for _ in 0..4 {
            match self.table.resolve(Some(host)) {
                Resolved::App {
                    target: Resolution::Upstream(up, g),
                    ..
                } if up.addr != tried.addr => return Some((up, g)),
                Resolved::App {
                    target: Resolution::Upstream(..),
                    ..
                } => continue,
                _ => return None,
            }
        }
        None
    }
}

/// Relays an upgraded WebSocket connection until it ends, counting it as in flight to its
/// instance and as open in the metrics, then writes its access log line (H15 for the idle
/// cut, H16 for a limit or protocol violation).
pub(crate) async fn websocket_session<C, B>(
    client: C,
    backend: B,
    ws: crate::WsOptions,
    (up, _in_flight): (Upstream, InFlight),
    closing: CancellationToken,
    metrics: Arc<AppMetrics>,
    record: Record,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    metrics.websocket(1);
    let retire = async {
        tokio::select! {
            _ = up.retire.cancelled() => {}
            _ = closing.cancelled() => {}
        }
    };
    let (ended, moved) = relay::relay(client, backend, ws, retire).await;
    metrics.websocket(-1);
    metrics.bytes(moved.up, moved.down);
    match ended {
        Ended::Idle => record.finish(Some(("H15", "Idle connection")), moved.down),
        Ended::Violation(v) => record.finish(
            Some((
                "H16",
                if v.close_code() == 1009 {
                    "WebSocket frame or message too large"
                } else {
                    "WebSocket protocol error"
                },
            )),
            moved.down,
        ),
        _ => record.finish(Ending::Complete.code(), moved.down),
    }
}
