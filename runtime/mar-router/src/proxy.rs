//! Forwarding one request: Host resolution, forwarded headers, hop-by-hop stripping, the
//! upstream call with its first-byte timeout and one retry on a refused connection, body
//! limits, WebSocket (HTTP Upgrade) relaying, and one access log line per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mar_core::AppName;
use tokio_util::sync::CancellationToken;

use crate::connector::{AppConnector, AppStalled};
use crate::metrics::Metrics;
use crate::relay::{self, Ended};
use crate::table::{AppOptions, InFlight, Resolution, Resolved, RouteTable, Upstream};
use crate::tracked::{LogSink, Record, Tracked};
use crate::upload::{Upload, UploadStalled, within_first_byte};
use crate::{Body, InProcess, error_response};

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
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte: Duration::from_secs(30),
            response_idle: Duration::from_secs(55),
            connect: Duration::from_secs(5),
        }
    }
}

/// What goes to an instance: the client's body, or nothing when a bodyless request is retried.
/// Bodies without a Content-Length (chunked) are counted as they stream, against the same limit.
type UpstreamBody = http_body_util::Either<
    Upload<http_body_util::Limited<Incoming>>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// The proxy: resolves each request's Host and sends it on. Cheap to share behind an `Arc`.
pub struct Proxy {
    pub(crate) table: Arc<RouteTable>,
    platform: Arc<dyn InProcess>,
    client: Client<AppConnector, UpstreamBody>,
    /// Idle connections to instances, for the HTTP/1.1 fast path.
    pub(crate) pool: crate::h1::Pool,
    log: Option<LogSink>,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled at shutdown.
    pub(crate) closing: CancellationToken,
    /// WebSocket sessions relayed after an upgrade on the general path, which outlive the
    /// request that started them: the server waits for them at shutdown, as for connections.
    pub(crate) sessions: tokio_util::task::TaskTracker,
    pub(crate) timeouts: Timeouts,
}

/// Where a request came in: for `X-Forwarded-*` and the access log.
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    /// The client's address.
    pub client: SocketAddr,
    /// The listener's address.
    pub local: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
}

/// Facts about the request kept for the access log and error pages.
pub(crate) struct Ctx {
    pub app: AppName,
    pub method: String,
    pub path: String,
    pub host: String,
    pub rid: String,
    pub json: bool,
    pub start: Instant,
    pub inbound: Inbound,
}

impl Proxy {
    /// A proxy over `table`, sending platform requests to `platform`; access log lines go to
    /// `log` (`None`: no access log). `closing` is cancelled at shutdown: open WebSockets then get a Close (1012).
    pub fn new(
        table: Arc<RouteTable>,
        platform: Arc<dyn InProcess>,
        log: Option<LogSink>,
        metrics: Arc<Metrics>,
        closing: CancellationToken,
        timeouts: Timeouts,
    ) -> Self {
        let mut connector = HttpConnector::new();
        // Small responses should not wait for Nagle's algorithm on the way to the app.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.connect));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(AppConnector(connector, timeouts.response_idle));
        Self {
            table,
            platform,
            client,
            pool: crate::h1::Pool::default(),
            log,
            metrics,
            closing,
            sessions: tokio_util::task::TaskTracker::new(),
            timeouts,
        }
    }

    /// Handles one client request.
    pub async fn handle(&self, req: Request<Incoming>, inbound: Inbound) -> Response<Body> {
        let host = host_of(&req);
        let resolved = self.table.resolve(host.as_deref());
        let json = wants_json(req.headers());
        match resolved {
            Resolved::Platform => self.platform.call(req, inbound.client).await,
            Resolved::NoSuchApp(host) => error_response(
                StatusCode::NOT_FOUND,
                "no-such-app",
                "No such app",
                &format!(
                    "There is no app at {host}. Create it with `mar apps:create NAME` and deploy with `git push`."
                ),
                &request_id(req.headers()),
                json,
            ),
            Resolved::App {
                app,
                target,
                options,
            } => {
                let ctx = Ctx {
                    app,
                    method: req.method().to_string(),
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned(),
                    host: host.unwrap_or_default(),
                    rid: request_id(req.headers()),
                    json,
                    start: Instant::now(),
                    inbound,
                };
                match target {
                    Resolution::InProcess(h) => h.call(req, inbound.client).await,
                    Resolution::Unavailable(u) => self.fail(
                        &ctx,
                        StatusCode::SERVICE_UNAVAILABLE,
                        u.code,
                        u.desc,
                        &u.hint,
                        "",
                    ),
                    Resolution::Upstream(up, guard) => {
                        let host = host_header(&ctx);
                        self.forward(req, ctx, up, guard, &options, host).await
                    }
                }
            }
        }
    }

    /// The access log record of a request whose context is no longer needed.
    pub(crate) fn record_owned(&self, ctx: Ctx, dyno: &str, status: u16) -> Record {
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

    pub(crate) fn record(&self, ctx: &Ctx, dyno: &str, status: u16) -> Record {
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

    /// A router error: logged with its code, answered with the error page.
    pub(crate) fn fail(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        code: &str,
        desc: &str,
        detail: &str,
        dyno: &str,
    ) -> Response<Body> {
        self.record(ctx, dyno, status.as_u16())
            .finish(Some((code, desc)), 0);
        error_response(status, code, desc, detail, &ctx.rid, ctx.json)
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        ctx: Ctx,
        up: Upstream,
        guard: InFlight,
        options: &AppOptions,
        host: Option<HeaderValue>,
    ) -> Response<Body> {
        let too_big = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > options.max_body);
        if too_big {
            return self.fail(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "H413",
                "Request body too large",
                &format!(
                    "This app accepts request bodies of at most {} bytes.",
                    options.max_body
                ),
                &up.dyno,
            );
        }
        let upgrade = is_upgrade(req.headers());
        let Ok(uri) = format!("http://{}{}", up.addr, ctx.path).parse::<Uri>() else {
            return self.fail(
                &ctx,
                StatusCode::BAD_REQUEST,
                "H400",
                "Bad request",
                "The request target is not a valid path.",
                &up.dyno,
            );
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let Some(h) = host {
            headers.insert(header::HOST, h);
        }
        add_forwarded(headers, &ctx.inbound, &ctx.rid);
        if upgrade {
            if let Some(u) = upgrade_value {
                headers.insert(header::UPGRADE, u);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return self.forward_upgrade(req, ctx, up, guard, options).await;
        }
        // A request without a body can be sent again if the instance refused the connection
        // (it is being replaced, or just crashed): keep what is needed to rebuild it.
        let retry = is_bodyless(&req).then(|| (req.method().clone(), req.headers().clone()));
        let max_body = usize::try_from(options.max_body).unwrap_or(usize::MAX);
        let (parts, body) = req.into_parts();
        let (body, sent) = Upload::new(
            http_body_util::Limited::new(body, max_body),
            self.timeouts.response_idle,
        );
        let fault = body.fault();
        let req = Request::from_parts(parts, UpstreamBody::Left(body));
        let first = self.timeouts.first_byte;
        let request = self.client.request(req);
        let (up, guard, res) = match within_first_byte(request, sent, first).await {
            Some(Err(e)) if e.is_connect() => {
                up.set_aside();
                match (retry, self.another(&ctx.host, &up)) {
                    (Some((method, headers)), Some((next, next_guard))) => {
                        let mut again =
                            Request::new(UpstreamBody::Right(http_body_util::Empty::new()));
                        *again.method_mut() = method;
                        *again.headers_mut() = headers;
                        let Ok(uri) = format!("http://{}{}", next.addr, ctx.path).parse::<Uri>()
                        else {
                            return self.refused(&ctx, &up);
                        };
                        *again.uri_mut() = uri;
                        drop(guard);
                        let res = tokio::time::timeout(first, self.client.request(again)).await;
                        (next, next_guard, res.ok())
                    }
                    _ => return self.refused(&ctx, &up),
                }
            }
            res => (up, guard, res),
        };
        match res {
            Some(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let record = self.record(&ctx, &up.dyno, parts.status.as_u16());
                let body = Tracked::new(body.map_err(Into::into).boxed_unsync(), Some(guard), record, self.timeouts.response_idle)
                    .with_upload(fault);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Some(Err(e)) if e.is_connect() => {
                up.set_aside();
                self.refused(&ctx, &up)
            }
            Some(Err(e)) if caused_by::<AppStalled>(&e) => self.fail(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "H12",
                "Request timeout",
                &format!(
                    "The app ({}) stopped reading the request for {} seconds without answering.",
                    up.dyno,
                    self.timeouts.response_idle.as_secs()
                ),
                &up.dyno,
            ),
            Some(Err(e)) if caused_by::<UploadStalled>(&e) => self.fail(
                &ctx,
                StatusCode::REQUEST_TIMEOUT,
                "H28",
                "Client connection idle",
                &format!(
                    "The client sent nothing of its request body for {} seconds.",
                    self.timeouts.response_idle.as_secs()
                ),
                &up.dyno,
            ),
            Some(Err(e)) if caused_by::<http_body_util::LengthLimitError>(&e) => self.fail(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "H413",
                "Request body too large",
                &format!("This app accepts request bodies of at most {} bytes.", options.max_body),
                &up.dyno,
            ),
            Some(Err(_)) if fault.get().is_some_and(|f| f.0 == "H400") => self.fail(
                &ctx,
                StatusCode::BAD_REQUEST,
                "H400",
                "Bad request",
                "The request body's chunked encoding is malformed.",
                &up.dyno,
            ),
            Some(Err(_)) if fault.get().is_some_and(|f| f.0 == "H27") => {
                // The client went away mid-upload: nobody is left to read a page.
                self.record(&ctx, &up.dyno, 499)
                    .finish(Some(("H27", "Client Request Interrupted")), 0);
                let mut gone = Response::new(crate::full(bytes::Bytes::new()));
                *gone.status_mut() = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
                gone
            }
            Some(Err(_)) => self.fail(
                &ctx,
                StatusCode::BAD_GATEWAY,
                "H13",
                "Connection closed without response",
                &format!("The app's instance {} closed the connection before sending a complete response.", up.dyno),
                &up.dyno,
            ),
            None => self.fail(
                &ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "H12",
                "Request timeout",
                &format!("The app ({}) did not start its response within {} seconds.", up.dyno, first.as_secs()),
                &up.dyno,
            ),
        }
    }

    pub(crate) fn refused(&self, ctx: &Ctx, up: &Upstream) -> Response<Body> {
        self.fail(
            ctx,
            StatusCode::BAD_GATEWAY,
            "H21",
            "Connection refused",
            &format!(
                "The app's instance {} refused the connection; it may be restarting.",
                up.dyno
            ),
            &up.dyno,
        )
    }

    /// Another upstream of the same app than `tried`, for a retry.
    pub(crate) fn another(&self, host: &str, tried: &Upstream) -> Option<(Upstream, InFlight)> {
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

    /// Relays an HTTP Upgrade (WebSocket): send the handshake on a fresh connection, and on
    /// `101` relay the two upgraded byte streams with the MAR idle rule.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        ctx: Ctx,
        up: Upstream,
        guard: InFlight,
        options: &AppOptions,
    ) -> Response<Body> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stream = match tokio::time::timeout(
            self.timeouts.connect,
            tokio::net::TcpStream::connect(up.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                up.set_aside();
                return self.refused(&ctx, &up);
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return self.refused(&ctx, &up);
        };
        tokio::spawn(async move {
            // Errors here are the backend closing the connection; the client sees them as EOF.
            let _ = conn.with_upgrades().await;
        });
        let (parts, _) = req.into_parts();
        let upstream_req = Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
        let mut resp =
            match tokio::time::timeout(self.timeouts.first_byte, sender.send_request(upstream_req))
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => return self.refused(&ctx, &up),
                Err(_) => {
                    return self.fail(
                        &ctx,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "H12",
                        "Request timeout",
                        "The app did not answer the WebSocket handshake in time.",
                        &up.dyno,
                    );
                }
            };
        let record = self.record(&ctx, &up.dyno, resp.status().as_u16());
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            let body = Tracked::new(
                body.map_err(Into::into).boxed_unsync(),
                Some(guard),
                record,
                self.timeouts.response_idle,
            );
            return Response::from_parts(parts, body.boxed_unsync());
        }
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let ws = options.ws;
        let (closing, metrics) = (self.closing.clone(), self.metrics.app(&ctx.app));
        self.sessions.spawn(async move {
            let (Ok(client_io), Ok(backend_io)) = tokio::join!(client_upgrade, backend_upgrade)
            else {
                return;
            };
            websocket_session(
                TokioIo::new(client_io),
                TokioIo::new(backend_io),
                ws,
                (up, guard),
                closing,
                metrics,
                record,
            )
            .await;
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, crate::full(bytes::Bytes::new()))
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
    metrics: Arc<crate::metrics::AppMetrics>,
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
        _ => record.finish(None, moved.down),
    }
}

/// Whether the upstream call failed for a reason of ours: an `E` (the client's body past the
/// limit or stalled, the app not reading) somewhere in its chain of causes, or inside an I/O
/// error there (an I/O error's `source()` skips the error it wraps).
fn caused_by<E: std::error::Error + 'static>(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<E>());
        if s.is::<E>() || wrapped {
            return true;
        }
        source = s.source();
    }
    false
}

/// A request whose body is known to be empty, so it can be rebuilt and sent again.
fn is_bodyless<B: hyper::body::Body>(req: &Request<B>) -> bool {
    req.body().is_end_stream() || req.body().size_hint().exact() == Some(0)
}

fn host_header(ctx: &Ctx) -> Option<HeaderValue> {
    HeaderValue::from_str(&ctx.host).ok()
}

fn host_of<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// plus the fixed list that only make sense on one connection.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// A usable incoming `X-Request-Id` (20 to 200 safe characters, as Heroku accepts), or a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && crate::h1::valid_request_id(v)
    {
        return v.to_owned();
    }
    new_request_id()
}

/// A fresh 32-hex-digit request id. Ids need to be unique, not secret, so a per-thread
/// xorshift generator seeded once from the OS stands in for a syscall per request.
pub(crate) fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new({
            let mut seed = [0u8; 16];
            if getrandom::fill(&mut seed).is_err() {
                let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                seed = t.to_le_bytes();
            }
            let a = u64::from_le_bytes([seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7]]);
            let b = u64::from_le_bytes([seed[8], seed[9], seed[10], seed[11], seed[12], seed[13], seed[14], seed[15]]);
            (a | 1, b | 1)
        });
    }
    let next = || {
        STATE.with(|st| {
            let (mut a, b) = st.get();
            let out = a.wrapping_add(b);
            a ^= a << 23;
            let n = a ^ b ^ (a >> 17) ^ (b >> 26);
            st.set((b, n));
            out
        })
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for word in [next(), next()] {
        for i in (0..16).rev() {
            id.push(HEX[((word >> (i * 4)) & 0xF) as usize] as char);
        }
    }
    id
}

fn add_forwarded(headers: &mut HeaderMap, inbound: &Inbound, rid: &str) {
    let ip = inbound.client.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    let pairs = [
        ("x-forwarded-for", xff),
        (
            "x-forwarded-proto",
            if inbound.tls { "https" } else { "http" }.to_owned(),
        ),
        ("x-forwarded-port", inbound.local.port().to_string()),
        ("x-request-id", rid.to_owned()),
        ("x-request-start", start),
    ];
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    headers.append(header::VIA, HeaderValue::from_static("1.1 mar"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("short"));
        assert_eq!(request_id(&h).len(), 32);
        assert_ne!(request_id(&h), request_id(&h));
        h.insert(
            "x-request-id",
            HeaderValue::from_static("abcdefghijklmnopqrstuvwxyz-0123"),
        );
        assert_eq!(request_id(&h), "abcdefghijklmnopqrstuvwxyz-0123");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let inbound = Inbound {
            client: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: true,
        };
        add_forwarded(&mut h, &inbound, "rid");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["via"], "1.1 mar");
    }
}
