//! Requests to in-process targets (the platform's API, WASM apps, and the services to come)
//! get what a request to an app behind a port gets: hop-by-hop headers removed and the
//! forwarded headers and request id added, the body limit and the upload's idle window, the
//! first-byte timeout, an in-flight count that a switch drains, an access log line, metrics,
//! and the same error pages. A handler's request carries its [`mar_http::Connection`].
//!
//! A handler's failure to read its body for a reason of the client's (too large, malformed,
//! stalled, gone) is answered by the router's page, as on the way to an app, whatever the
//! handler made of the error; a handler that panics is H500.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::Body;
use crate::failure::Failure;
use crate::forwarding::{
    Forwarded, add_forwarded, is_upgrade, point_redirect_at_https, strip_hop_by_hop,
};
use crate::general_path::announced_length;
use crate::shared::{Ctx, Shared};
use crate::table::{AppOptions, InFlight, InProcessTarget};
use crate::tracked::Tracked;
use crate::upload::{Upload, within_first_byte};

/// Calls `target`'s handler with the request and accounts for the exchange.
pub(crate) async fn serve(
    shared: &Shared,
    mut req: Request<Incoming>,
    ctx: Ctx,
    target: InProcessTarget,
    guard: InFlight,
    options: &AppOptions,
) -> Response<Body> {
    let patient = target.patient;
    let max_body = options.max_body;
    let fail = |f| shared.fail(&ctx, f, &target.name, max_body);
    if !patient && announced_length(&req).is_some_and(|n| n > max_body) {
        return fail(Failure::TooLarge);
    }
    let upgrade = is_upgrade(req.headers());
    let headers = req.headers_mut();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if upgrade && let Some(u) = upgrade_value {
        // The handler answers the handshake itself, and needs to see what was asked for.
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    add_forwarded(headers, &Forwarded::now(&ctx.inbound, &ctx.rid));
    let http11 = req.version() == http::Version::HTTP_11;
    req.extensions_mut().insert(mar_http::Connection {
        client: ctx.inbound.client,
        local: ctx.inbound.local,
        scheme: ctx.inbound.scheme(),
        request_id: ctx.rid.clone(),
        // Only where an upgrade hands the handler the connection itself (HTTP/1.1): an HTTP/2
        // stream shares its socket with others, which a handler must not touch.
        socket: http11
            .then_some(ctx.inbound.fd)
            .flatten()
            .map(mar_http::ClientSocket::new),
    });
    let idle = (!patient).then_some(shared.timeouts.response_idle);
    let limit = if patient {
        usize::MAX
    } else {
        usize::try_from(max_body).unwrap_or(usize::MAX)
    };
    let (parts, body) = req.into_parts();
    let (body, sent) = Upload::new(http_body_util::Limited::new(body, limit), idle);
    let fault = body.fault();
    let req = Request::from_parts(parts, body.boxed_unsync());
    // A panic in `call` itself, or in the future it returns, fails this request only.
    let handler = &target.handler;
    let call = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(req))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind(),
        Err(_) => {
            tracing::error!(target = %target.name, "in-process handler panicked");
            return fail(Failure::HandlerFailed);
        }
    };
    // As for an app, the first-byte timer starts once the handler has read the whole body
    // (or dropped it); a handler that leaves its body unread starts it after the idle window,
    // so it cannot hold the request (and a switch's drain) forever.
    let answer = if patient {
        Some(call.await)
    } else {
        let idle = shared.timeouts.response_idle;
        let body_done = async move {
            let _ = tokio::time::timeout(idle, sent).await;
        };
        within_first_byte(call, body_done, shared.timeouts.first_byte).await
    };
    let resp = match answer {
        None => return fail(Failure::Timeout),
        Some(Err(_)) => {
            tracing::error!(target = %target.name, "in-process handler panicked");
            return fail(Failure::HandlerFailed);
        }
        Some(Ok(resp)) => resp,
    };
    // The handler's own deadline passed (a WASM guest stopped): the router's timeout page.
    if resp.extensions().get::<mar_http::TimedOut>().is_some() {
        return fail(Failure::HandlerDeadline);
    }
    if let Some(f) = fault.get().copied() {
        return fail(f);
    }
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(&mut parts.headers);
    }
    point_redirect_at_https(
        &mut parts.headers,
        shared.redirect_target(&ctx, parts.status.as_u16()),
    );
    let record = shared.record(&ctx, &target.name, parts.status.as_u16());
    let body = Tracked::new(body, Some(guard), record, idle).with_upload(fault);
    Response::from_parts(parts, body.boxed_unsync())
}
