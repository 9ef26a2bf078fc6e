//! The general path: hyper serves the connection (HTTP/2, and whatever the HTTP/1.1 fast path
//! hands over) and each request is resolved and sent on here: to an app's instance through
//! hyper's client (with its first-byte timeout and one retry on a refused connection, body
//! limits, WebSocket upgrades relayed with the idle rule), or to an in-process handler
//! (`in_process.rs`). Failures are answered from the one failure table (`failure.rs`).

use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Body;
use crate::connector::{AppConnector, AppStalled};
use crate::error_response;
use crate::failure::Failure;
use crate::forwarding::{
    Forwarded, Inbound, add_forwarded, host_of, is_upgrade, point_redirect_at_https, request_id,
    strip_hop_by_hop, wants_json,
};
use crate::shared::{Ctx, Shared, Timeouts, websocket_session};
use crate::table::{AppOptions, InFlight, Resolution, Resolved, Upstream};
use crate::tracked::Tracked;
use crate::upload::{Upload, UploadStalled, within_first_byte};

/// What goes to an instance: the client's body, or nothing when a bodyless request is retried.
/// Bodies without a Content-Length (chunked) are counted as they stream, against the same limit.
type UpstreamBody = http_body_util::Either<
    Upload<http_body_util::Limited<Incoming>>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// The general path's own state: hyper's client and its pool of app connections.
pub(crate) struct GeneralPath {
    client: Client<AppConnector, UpstreamBody>,
}

impl GeneralPath {
    /// A client that connects to apps within `timeouts.connect`.
    pub fn new(timeouts: &Timeouts) -> Self {
        let mut connector = HttpConnector::new();
        // Small responses should not wait for Nagle's algorithm on the way to the app.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.connect));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(AppConnector(connector, timeouts.response_idle));
        Self { client }
    }

    /// Handles one client request.
    pub async fn handle(
        &self,
        shared: &Shared,
        req: Request<Incoming>,
        inbound: Inbound,
    ) -> Response<Body> {
        let json = wants_json(req.headers());
        if !host_is_clear(&req) {
            let page = Failure::BadHost.page(&crate::failure::Facts {
                dyno: "",
                first_byte: shared.timeouts.first_byte,
                idle: shared.timeouts.response_idle,
                max_body: 0,
            });
            let mut resp = error_response(
                page.status,
                page.code,
                page.desc,
                &page.detail,
                &request_id(req.headers()),
                json,
            );
            // What follows on this connection cannot be trusted to be framed as it looks.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        let host = host_of(&req);
        let start = Instant::now();
        // A request for a booting app is held until an instance is up (or crashed, or the
        // wait is over), as Heroku's router queues requests for a booting dyno: right after
        // `ps:scale web=1` or a restart of `mar serve`, the first requests are answered, not
        // turned away.
        let resolved = shared
            .table
            .resolve_after_boot(host.as_deref(), shared.timeouts.boot_wait, &shared.closing)
            .await;
        let ctx = |app| Ctx {
            app,
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            host: host.clone().unwrap_or_default(),
            rid: request_id(req.headers()),
            json,
            // The wait for a boot counts: the client waited.
            start,
            inbound,
        };
        match resolved {
            Resolved::Platform => {
                let ctx = ctx(mar_core::AppName::platform());
                let target = shared.platform.clone();
                let guard = target.count();
                crate::in_process::serve(shared, req, ctx, target, guard, &AppOptions::default())
                    .await
            }
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
                let ctx = ctx(app);
                match target {
                    Resolution::InProcess(target, guard) => {
                        crate::in_process::serve(shared, req, ctx, target, guard, &options).await
                    }
                    Resolution::Unavailable(u) => shared.unavailable(&ctx, &u),
                    Resolution::Upstream(up, guard) => {
                        let host = HeaderValue::from_str(&ctx.host).ok();
                        self.forward(shared, req, ctx, up, guard, &options, host)
                            .await
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        shared: &Shared,
        mut req: Request<Incoming>,
        ctx: Ctx,
        up: Upstream,
        guard: InFlight,
        options: &AppOptions,
        host: Option<HeaderValue>,
    ) -> Response<Body> {
        let fail = |f| shared.fail(&ctx, f, &up.dyno, options.max_body);
        if announced_length(&req).is_some_and(|n| n > options.max_body) {
            return fail(Failure::TooLarge);
        }
        let upgrade = is_upgrade(req.headers());
        let Ok(uri) = format!("http://{}{}", up.addr, ctx.path).parse::<Uri>() else {
            return fail(Failure::BadTarget);
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let Some(h) = host {
            headers.insert(header::HOST, h);
        }
        add_forwarded(headers, &Forwarded::now(&ctx.inbound, &ctx.rid));
        if upgrade {
            if let Some(u) = upgrade_value {
                headers.insert(header::UPGRADE, u);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return self
                .forward_upgrade(shared, req, ctx, up, guard, options)
                .await;
        }
        // A request without a body can be sent again if the instance refused the connection
        // (it is being replaced, or just crashed): keep what is needed to rebuild it.
        let retry = is_bodyless(&req).then(|| (req.method().clone(), req.headers().clone()));
        let max_body = usize::try_from(options.max_body).unwrap_or(usize::MAX);
        let (parts, body) = req.into_parts();
        let (body, sent) = Upload::new(
            http_body_util::Limited::new(body, max_body),
            Some(shared.timeouts.response_idle),
        );
        let fault = body.fault();
        let req = Request::from_parts(parts, UpstreamBody::Left(body));
        let first = shared.timeouts.first_byte;
        let request = self.client.request(req);
        let (up, guard, res) = match within_first_byte(request, sent, first).await {
            Some(Err(e)) if e.is_connect() => {
                up.set_aside();
                let refused = || shared.fail(&ctx, Failure::Refused, &up.dyno, options.max_body);
                match (retry, shared.another(&ctx.host, &up)) {
                    (Some((method, headers)), Some((next, next_guard))) => {
                        let mut again =
                            Request::new(UpstreamBody::Right(http_body_util::Empty::new()));
                        *again.method_mut() = method;
                        *again.headers_mut() = headers;
                        let Ok(uri) = format!("http://{}{}", next.addr, ctx.path).parse::<Uri>()
                        else {
                            return refused();
                        };
                        *again.uri_mut() = uri;
                        drop(guard);
                        let res = tokio::time::timeout(first, self.client.request(again)).await;
                        (next, next_guard, res.ok())
                    }
                    _ => return refused(),
                }
            }
            res => (up, guard, res),
        };
        let fail = |f| shared.fail(&ctx, f, &up.dyno, options.max_body);
        match res {
            Some(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                point_redirect_at_https(
                    &mut parts.headers,
                    shared.redirect_target(&ctx, parts.status.as_u16()),
                );
                let record = shared.record(&ctx, &up.dyno, parts.status.as_u16());
                let body = Tracked::new(
                    body.map_err(Into::into).boxed_unsync(),
                    Some(guard),
                    record,
                    Some(shared.timeouts.response_idle),
                )
                .with_upload(fault);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Some(Err(e)) if e.is_connect() => {
                up.set_aside();
                fail(Failure::Refused)
            }
            Some(Err(e)) if caused_by::<AppStalled>(&e) => fail(Failure::AppStalled),
            Some(Err(e)) if caused_by::<UploadStalled>(&e) => fail(Failure::ClientIdle),
            Some(Err(e)) if caused_by::<http_body_util::LengthLimitError>(&e) => {
                fail(Failure::TooLarge)
            }
            // The client's body failed first (malformed, or the client went away mid-upload).
            Some(Err(_)) => fail(fault.get().copied().unwrap_or(Failure::Broken)),
            None => fail(Failure::Timeout),
        }
    }

    /// Relays an HTTP Upgrade (WebSocket): send the handshake on a fresh connection, and on
    /// `101` relay the two upgraded byte streams with the MAR idle rule.
    async fn forward_upgrade(
        &self,
        shared: &Shared,
        mut req: Request<Incoming>,
        ctx: Ctx,
        up: Upstream,
        guard: InFlight,
        options: &AppOptions,
    ) -> Response<Body> {
        let fail = |f| shared.fail(&ctx, f, &up.dyno, options.max_body);
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stream = match tokio::time::timeout(
            shared.timeouts.connect,
            tokio::net::TcpStream::connect(up.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                up.set_aside();
                return fail(Failure::Refused);
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return fail(Failure::Refused);
        };
        tokio::spawn(async move {
            // Errors here are the backend closing the connection; the client sees them as EOF.
            let _ = conn.with_upgrades().await;
        });
        let (parts, _) = req.into_parts();
        let upstream_req = Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
        let mut resp = match tokio::time::timeout(
            shared.timeouts.first_byte,
            sender.send_request(upstream_req),
        )
        .await
        {
            Ok(Ok(r)) => r,
            // As on the fast path: the app took the handshake and closed without an answer.
            Ok(Err(_)) => return fail(Failure::Broken),
            Err(_) => return fail(Failure::Timeout),
        };
        let record = shared.record(&ctx, &up.dyno, resp.status().as_u16());
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            let body = Tracked::new(
                body.map_err(Into::into).boxed_unsync(),
                Some(guard),
                record,
                Some(shared.timeouts.response_idle),
            );
            return Response::from_parts(parts, body.boxed_unsync());
        }
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        let ws = options.ws;
        let (closing, metrics) = (shared.closing.clone(), shared.metrics.app(&ctx.app));
        shared.sessions.spawn(async move {
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

/// Whether the request names one host unambiguously: one `Host` header at most, one at least
/// on HTTP/1.1 (RFC 9112 §3.2), and, with an absolute-form target (or HTTP/2's `:authority`),
/// a `Host` that agrees with it. A front proxy and the router must not read two different
/// apps out of one request.
fn host_is_clear<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    // A Host that is not an authority (`[::1] status=200`) would be read one way by the route
    // table and written another way into the access log.
    if host.is_some_and(|h| http::uri::Authority::try_from(h.as_bytes()).is_err()) {
        return false;
    }
    match (host, req.uri().authority()) {
        (None, None) => req.version() != Version::HTTP_11,
        (Some(h), Some(a)) => h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()),
        _ => true,
    }
}

/// The request's `Content-Length`, when it has a valid one.
pub(crate) fn announced_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
