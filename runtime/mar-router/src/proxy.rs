//! Forwarding one request: Host resolution, forwarded headers, hop-by-hop stripping, the
//! upstream call with its first-byte timeout, and WebSocket (HTTP Upgrade) relaying.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::table::{InFlight, Resolution, Resolved, RouteTable, Unavailable, Upstream};
use crate::{Body, InProcess, error_response};

/// Time allowed for an app to start its response (Heroku's H12 after 30 s).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to open a connection to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What goes to an instance: the client's body, or nothing when a bodyless request is retried.
type UpstreamBody = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;

/// The proxy: resolves each request's Host and sends it on. Cheap to share behind an `Arc`.
pub struct Proxy {
    table: Arc<RouteTable>,
    platform: Arc<dyn InProcess>,
    client: Client<HttpConnector, UpstreamBody>,
}

impl Proxy {
    /// A proxy over `table`, sending platform requests to `platform`.
    pub fn new(table: Arc<RouteTable>, platform: Arc<dyn InProcess>) -> Self {
        let mut connector = HttpConnector::new();
        // Small responses should not wait for Nagle's algorithm on the way to the app.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            table,
            platform,
            client,
        }
    }

    /// The route table this proxy reads.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// Handles one client request. `local` is the listener's address.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        let host = host_of(&req);
        let resolved = self.table.resolve(host.as_deref());
        let json = wants_json(req.headers());
        match resolved {
            Resolved::Platform => self.platform.call(req, client).await,
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
            Resolved::App { target, .. } => match target {
                Resolution::InProcess(h) => h.call(req, client).await,
                Resolution::Unavailable(u) => unavailable(&u, &request_id(req.headers()), json),
                Resolution::Upstream(up, guard) => {
                    self.forward(req, up, guard, client, local).await
                }
            },
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        up: Upstream,
        guard: InFlight,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        let rid = request_id(req.headers());
        let json = wants_json(req.headers());
        let upgrade = is_upgrade(req.headers());
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let Ok(uri) = format!("http://{}{}", up.addr, path).parse::<Uri>() else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                "The request target is not a valid path.",
                &rid,
                json,
            );
        };
        let host = host_of(&req);
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        let upgrade_value = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(header::HOST, h);
        }
        add_forwarded(headers, client, local, &rid);
        if upgrade {
            if let Some(u) = upgrade_value {
                headers.insert(header::UPGRADE, u);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return self.forward_upgrade(req, up, guard, &rid, json).await;
        }
        // A request without a body can be sent again if the instance refused the connection
        // (it is being replaced, or just crashed): keep what is needed to rebuild it.
        let retry = is_bodyless(&req).then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let req = req.map(UpstreamBody::Left);
        let (up, guard, res) =
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, self.client.request(req)).await {
                Ok(Err(e)) if e.is_connect() && retry.is_some() => {
                    match (self.another(&host, &up), retry) {
                        (Some((next, next_guard)), Some((method, uri, headers))) => {
                            let mut again =
                                Request::new(UpstreamBody::Right(http_body_util::Empty::new()));
                            *again.method_mut() = method;
                            *again.headers_mut() = headers;
                            let Ok(uri) = format!(
                                "http://{}{}",
                                next.addr,
                                uri.path_and_query().map_or("/", |p| p.as_str())
                            )
                            .parse::<Uri>() else {
                                return refused(&up, &rid, json);
                            };
                            *again.uri_mut() = uri;
                            drop(guard);
                            let res = tokio::time::timeout(
                                FIRST_BYTE_TIMEOUT,
                                self.client.request(again),
                            )
                            .await;
                            (next, next_guard, res)
                        }
                        _ => (up.clone(), guard, Ok(Err(e))),
                    }
                }
                res => (up, guard, res),
            };
        match res {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The request stays in flight until its response body is done or dropped.
                let body = body.map_err(Into::into).map_frame(move |f| {
                    let _ = &guard;
                    f
                });
                Response::from_parts(parts, body.boxed_unsync())
            }
            Ok(Err(e)) => upstream_error(&e, &up, &rid, json),
            Err(_) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "H12",
                "Request timeout",
                &format!(
                    "The app ({}) did not start its response within {} seconds.",
                    up.dyno,
                    FIRST_BYTE_TIMEOUT.as_secs()
                ),
                &rid,
                json,
            ),
        }
    }

    /// Relays an HTTP Upgrade (WebSocket): send the handshake on a fresh connection, and on
    /// `101` splice the two upgraded byte streams together.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        up: Upstream,
        guard: InFlight,
        rid: &str,
        json: bool,
    ) -> Response<Body> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(up.addr))
                .await
            {
                Ok(Ok(s)) => s,
                _ => return refused(&up, rid, json),
            };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return refused(&up, rid, json);
        };
        tokio::spawn(async move {
            // Errors here are the backend closing the connection; the client sees them as EOF.
            let _ = conn.with_upgrades().await;
        });
        let (parts, _) = req.into_parts();
        let upstream_req = Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
        let mut resp =
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, sender.send_request(upstream_req)).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => return refused(&up, rid, json),
                Err(_) => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "H12",
                        "Request timeout",
                        "The app did not answer the WebSocket handshake in time.",
                        rid,
                        json,
                    );
                }
            };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        }
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            // A WebSocket counts as in flight for as long as it is open.
            let _guard = guard;
            let (Ok(client_io), Ok(backend_io)) = tokio::join!(client_upgrade, backend_upgrade)
            else {
                return;
            };
            let mut client_io = TokioIo::new(client_io);
            let mut backend_io = TokioIo::new(backend_io);
            let _ = tokio::io::copy_bidirectional(&mut client_io, &mut backend_io).await;
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(parts, crate::full(bytes::Bytes::new()))
    }
}

impl Proxy {
    /// Another upstream of the same app than `tried`, for a retry.
    fn another(&self, host: &Option<String>, tried: &Upstream) -> Option<(Upstream, InFlight)> {
        for _ in 0..4 {
            match self.table.resolve(host.as_deref()) {
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

/// A request whose body is known to be empty, so it can be rebuilt and sent again.
fn is_bodyless<B: hyper::body::Body>(req: &Request<B>) -> bool {
    req.body().is_end_stream() || req.body().size_hint().exact() == Some(0)
}

fn unavailable(u: &Unavailable, rid: &str, json: bool) -> Response<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        u.code,
        u.desc,
        &u.hint,
        rid,
        json,
    )
}

fn refused(up: &Upstream, rid: &str, json: bool) -> Response<Body> {
    error_response(
        StatusCode::BAD_GATEWAY,
        "H21",
        "Connection refused",
        &format!(
            "The app's instance {} refused the connection; it may be restarting.",
            up.dyno
        ),
        rid,
        json,
    )
}

fn upstream_error(
    e: &hyper_util::client::legacy::Error,
    up: &Upstream,
    rid: &str,
    json: bool,
) -> Response<Body> {
    if e.is_connect() {
        return refused(up, rid, json);
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        "H13",
        "Connection closed without response",
        &format!(
            "The app's instance {} closed the connection before sending a complete response.",
            up.dyno
        ),
        rid,
        json,
    )
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
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        let ok = (20..=200).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=/-_".contains(&b));
        if ok {
            return v.to_owned();
        }
    }
    let mut buf = [0u8; 16];
    if getrandom::fill(&mut buf).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        buf.copy_from_slice(&t.to_le_bytes());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, local: SocketAddr, rid: &str) {
    let ip = client.ip().to_string();
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
        ("x-forwarded-proto", "http".to_owned()),
        ("x-forwarded-port", local.port().to_string()),
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
        add_forwarded(
            &mut h,
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "rid",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["via"], "1.1 mar");
    }
}
