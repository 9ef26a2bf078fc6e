//! Browsers' access to the services' APIs: pages served by apps (`APP.DOMAIN`) call MWS and
//! EDS on the platform's host, another origin. Those APIs authenticate with headers (a
//! bearer token, `Enginio-Backend-Id`), never cookies, so any origin may call them: the
//! preflight is answered and every answer carries `Access-Control-Allow-Origin: *`. The
//! platform's own admin API stays same-origin. The JS SDK (`sdk/js/mar.js`) is served at
//! `/sdk/mar.js`, so a page imports the client of the server it talks to.

use http::{HeaderValue, Method, Response, StatusCode, header};
use mar_http::Body;

/// The JS SDK, built into the binary.
const SDK_JS: &str = include_str!("../../../../sdk/js/mar.js");

/// Whether a request to `path` is one browsers may make from any origin.
pub(super) fn open_to_browsers(path: &str) -> bool {
    mar_mws::Gateways::serves(path) || mar_eds::Backends::serves(path) || path == "/sdk/mar.js"
}

/// The answer to a CORS preflight.
pub(super) fn preflight() -> Response<Body> {
    let mut r = Response::new(mar_http::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, Content-Range, Enginio-Backend-Id, Enginio-Backend-Session, Enginio-Backend-Secret, X-Request-Id",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Lets any origin read an answer.
pub(super) fn allow(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// `GET /sdk/mar.js`.
pub(super) fn sdk() -> Response<Body> {
    let mut r = Response::new(mar_http::full(SDK_JS));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    allow(r)
}

/// Whether this is a preflight.
pub(super) fn is_preflight(method: &Method) -> bool {
    method == Method::OPTIONS
}
