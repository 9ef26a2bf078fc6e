//! The EDS REST API as Enginio's clients speak it (qtc-api.md §2), behind a
//! [`mar_http::Handler`], and the registry of backends. The backend is chosen by the
//! `Enginio-Backend-Id` header; the caller by `Authorization: Bearer` (the backend's secret,
//! the master key, or a user's session token; the scheme in any case, as the Android SDK
//! sends `BEARER`), `Enginio-Backend-MasterKey`, or the legacy `Enginio-Backend-Session`.
//! Bodies are JSON whatever the Content-Type says (the Node SDK sends none), collection URLs
//! may end in a slash, and every answer is a JSON object, errors as `{"errors":[…]}`.
//!
//! Blocking work (SQLite, argon2) runs on the backends' own executor's blocking threads:
//! never on the router's threads, never beside MWS's sessions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mar_http::{Body, Handler, ResponseFuture};
use serde_json::{Value, json};

use crate::EdsError;
use crate::acl::Caller;
use crate::backend::{AccessOp, Backend, Ctx};
use crate::query::parse_params;
use crate::sqlite::SqliteStorage;
use crate::webhooks::Sink;
use tokio_util::sync::CancellationToken;

/// The largest request body (an object, a user, an ACL).
pub const MAX_BODY: usize = 1 << 20;

/// Every backend of the server, their files' directory, and the executor their work runs on.
pub struct Backends {
    map: RwLock<HashMap<String, (Arc<Backend>, CancellationToken)>>,
    dir: PathBuf,
    sink: Arc<dyn Sink>,
    streams: Arc<crate::stream::Streams>,
    stop: CancellationToken,
    executor: tokio::runtime::Handle,
    _runtime: RuntimeGuard,
}

/// Shuts the backends' runtime down without blocking when they go.
struct RuntimeGuard(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Backends {
    /// No backends yet; their files go in `dir` (made private to the server's user), and
    /// their webhooks' deliveries to `sink`.
    pub fn new(dir: PathBuf, sink: Arc<dyn Sink>) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // Inserts waiting for the writer join its next group commit: with more of them
            // waiting, a commit (one fsync) carries more inserts (eds-crud: 3.3k → 3.9k
            // inserts/s, p99 18 → 11 ms, at 16 connections). A waiting thread costs no CPU.
            .max_blocking_threads(24)
            .thread_name("mar-eds")
            .enable_all()
            .build()?;
        Ok(Arc::new(Self {
            map: RwLock::new(HashMap::new()),
            dir,
            sink,
            streams: Arc::default(),
            stop: CancellationToken::new(),
            executor: rt.handle().clone(),
            _runtime: RuntimeGuard(Some(rt)),
        }))
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.db"))
    }

    /// Opens (creating) a backend's file and serves it.
    pub fn add(
        &self,
        id: &str,
        name: &str,
        secret: &str,
        api_key: Option<&str>,
    ) -> Result<Arc<Backend>, EdsError> {
        use std::os::unix::fs::PermissionsExt;
        if !crate::ids::valid(id) {
            return Err(EdsError::BadRequest(format!("{id:?} is not a backend id")));
        }
        let path = self.file(id);
        let storage = SqliteStorage::open(&path)?;
        for suffix in ["", "-wal", "-shm"] {
            let f = PathBuf::from(format!("{}{suffix}", path.display()));
            let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600));
        }
        let files = crate::files::dir_for(&path);
        std::fs::create_dir_all(&files)
            .and_then(|()| std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| EdsError::Storage(format!("{}: {e}", files.display())))?;
        let b = Arc::new(Backend::new(
            id,
            name,
            secret,
            api_key,
            Arc::new(storage),
            files,
        ));
        if let Err(e) = b.sweep_files() {
            tracing::warn!("eds {id}: sweeping files: {e}");
        }
        let stop = CancellationToken::new();
        self.executor.spawn(crate::webhooks::run(
            id.to_owned(),
            b.storage.clone(),
            self.sink.clone(),
            self.streams.clone(),
            b.changed.clone(),
            stop.clone(),
        ));
        let old = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), (b.clone(), stop));
        if let Some((_, stop)) = old {
            stop.cancel();
        }
        Ok(b)
    }

    /// Stops serving a backend and deletes its data.
    pub fn remove(&self, id: &str) {
        let gone = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some((_, stop)) = &gone {
            stop.cancel();
        }
        if gone.is_some() && crate::ids::valid(id) {
            let path = self.file(id);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            let _ = std::fs::remove_dir_all(crate::files::dir_for(&path));
        }
    }

    /// A backend by id.
    pub fn get(&self, id: &str) -> Option<Arc<Backend>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(b, _)| b.clone())
    }

    /// Serves the notification stream on `addr` (its own listener: see [`crate::stream`]);
    /// the address it got.
    pub fn listen_stream(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let _guard = self.executor.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        self.executor.spawn(self.streams.clone().serve(
            listener,
            self.stop.clone(),
            crate::stream::MAX_CONNECTIONS,
        ));
        Ok(local)
    }

    /// Stops every deliverer and the stream (the server is stopping).
    pub fn stop(&self) {
        self.stop.cancel();
        for (_, stop) in self.map.read().unwrap_or_else(|e| e.into_inner()).values() {
            stop.cancel();
        }
    }

    /// Whether `path` is one this API serves.
    pub fn serves(path: &str) -> bool {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return false;
        };
        let first = rest.split('/').next().unwrap_or("");
        matches!(
            first,
            "objects"
                | "users"
                | "usergroups"
                | "user"
                | "auth"
                | "object_types"
                | "webhooks"
                | "search"
                | "files"
                | "stream_url"
        )
    }
}

/// The EDS handler.
#[derive(Clone)]
pub struct EdsHandler {
    backends: Arc<Backends>,
}

impl EdsHandler {
    /// Serves `backends`.
    pub fn new(backends: Arc<Backends>) -> Self {
        Self { backends }
    }
}

impl Handler for EdsHandler {
    fn call(&self, req: Request<Body>) -> ResponseFuture {
        let backends = self.backends.clone();
        Box::pin(async move { serve(backends, req).await })
    }
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(mar_http::full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn error_response(e: &EdsError) -> Response<Body> {
    if let EdsError::Storage(detail) = e {
        tracing::error!("eds: {detail}");
    }
    json_response(e.status(), &e.body())
}

/// The OAuth2 error of RFC 6749 (what a failed sign-in answers).
fn oauth_error(error: &str, description: &str) -> Response<Body> {
    json_response(
        400,
        &json!({"error": error, "error_description": description}),
    )
}

fn header_str<'a>(req: &'a Request<Body>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body, at most [`MAX_BODY`].
async fn read_body(req: Request<Body>) -> Result<Bytes, EdsError> {
    read_body_up_to(req, MAX_BODY).await
}

/// Reads the body, at most `limit` bytes.
async fn read_body_up_to(req: Request<Body>, limit: usize) -> Result<Bytes, EdsError> {
    let too_large = || EdsError::TooLarge(format!("the body is larger than {} KiB", limit >> 10));
    if let Some(n) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && n > limit
    {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(EdsError::BadRequest(
                "the request body broke off".to_owned(),
            ));
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

fn parse_json(body: &[u8]) -> Result<Value, EdsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body)
        .map_err(|e| EdsError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// A form body's fields (`a=1&b`), percent-decoded.
fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                mar_http::percent_decode(k, true),
                mar_http::percent_decode(v, true),
            )
        })
        .collect()
}

/// The headers that say who is calling.
struct Credentials {
    master_key: Option<String>,
    authorization: Option<String>,
    session: Option<String>,
    backend_secret: Option<String>,
}

impl Credentials {
    fn of(req: &Request<Body>) -> Self {
        let h = |name| header_str(req, name).map(str::to_owned);
        Credentials {
            master_key: h("enginio-backend-masterkey"),
            authorization: h("authorization"),
            session: h("enginio-backend-session"),
            backend_secret: h("enginio-backend-secret"),
        }
    }
}

/// Who is calling (a token lookup reads SQLite: called on a blocking thread).
fn caller(b: &Backend, c: &Credentials) -> Result<Caller, EdsError> {
    if let Some(key) = &c.master_key {
        return if b.is_secret(key.trim()) {
            Ok(Caller::Master)
        } else {
            Err(EdsError::Unauthorized("wrong master key".to_owned()))
        };
    }
    if let Some(auth) = &c.authorization {
        let token = mar_http::credentials::bearer(auth).ok_or_else(|| {
            EdsError::Unauthorized("Authorization must be Bearer TOKEN".to_owned())
        })?;
        return b.caller_for(token);
    }
    if let Some(session) = &c.session {
        return b.caller_for(session.trim());
    }
    // 2013 clients carried a backend secret: the API key (an anonymous client) or the
    // master key.
    if let Some(s) = &c.backend_secret {
        return if b.is_secret(s.trim()) {
            Ok(Caller::Master)
        } else if b.is_api_key(s.trim()) {
            Ok(Caller::Anonymous)
        } else {
            Err(EdsError::Unauthorized(
                "wrong Enginio-Backend-Secret".to_owned(),
            ))
        };
    }
    Ok(Caller::Anonymous)
}

async fn serve(backends: Arc<Backends>, req: Request<Body>) -> Response<Body> {
    match handle(backends, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn handle(backends: Arc<Backends>, req: Request<Body>) -> Result<Response<Body>, EdsError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<String> = path
        .strip_prefix("/v1/")
        .unwrap_or("")
        .split('/')
        .map(|s| mar_http::percent_decode(s, false))
        .collect();
    // A signed download URL works without any EDS header.
    if req.method() == Method::GET
        && segments.len() == 3
        && segments[0] == "files"
        && segments[2] == "download"
    {
        return download(&backends, &segments[1], req.uri().query()).await;
    }
    let Some(id) = header_str(&req, "enginio-backend-id").map(str::trim) else {
        return Err(EdsError::BadRequest(
            "Enginio-Backend-Id is missing: it names the backend".to_owned(),
        ));
    };
    let Some(b) = backends.get(id) else {
        return Err(EdsError::NotFound(format!("no backend with id {id}")));
    };
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let seg: Vec<String> = segments.clone();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();

    // Signing in ignores a stale Authorization header (qtenginio sends one when switching
    // users).
    if method == Method::POST && seg == ["auth", "oauth2", "token"] {
        let body = read_body(req).await?;
        let f = form(&body);
        if f.get("grant_type").map(String::as_str) != Some("password") {
            return Ok(oauth_error(
                "unsupported_grant_type",
                "grant_type must be password",
            ));
        }
        let (u, p) = (
            f.get("username").cloned().unwrap_or_default(),
            f.get("password").cloned().unwrap_or_default(),
        );
        let r = run(&backends, move || b.login(&u, &p)).await;
        return Ok(match r {
            Ok(v) => json_response(200, &v),
            Err(EdsError::Unauthorized(_)) => {
                oauth_error("invalid_grant", "the username or password is wrong")
            }
            Err(e) => error_response(&e),
        });
    }
    if method == Method::POST && seg == ["auth", "identity"] {
        // Enginio 0.x: JSON credentials, a `sessionToken` for `Enginio-Backend-Session`.
        let body = parse_json(&read_body(req).await?)?;
        let u = body["username"].as_str().unwrap_or("").to_owned();
        let p = body["password"].as_str().unwrap_or("").to_owned();
        let v = run(&backends, move || b.login(&u, &p))
            .await
            .map_err(|e| match e {
                EdsError::Unauthorized(_) => {
                    EdsError::Unauthorized("the username or password is wrong".to_owned())
                }
                e => e,
            })?;
        return Ok(json_response(
            200,
            &json!({"sessionToken": v["access_token"], "user": v["enginio_data"]["user"], "usergroups": v["enginio_data"]["usergroups"]}),
        ));
    }
    if method == Method::POST && seg == ["auth", "oauth2", "revoke"] {
        let body = read_body(req).await?;
        let token = form(&body)
            .remove("token")
            .filter(|t| !t.is_empty() && !t.starts_with('{'))
            .or_else(|| {
                parse_json(&body)
                    .ok()
                    .and_then(|v| v["token"].as_str().map(str::to_owned))
            })
            .ok_or_else(|| EdsError::BadRequest("token is missing".to_owned()))?;
        run(&backends, move || b.revoke(&token)).await?;
        return Ok(json_response(200, &json!({})));
    }

    if segments.first().map(String::as_str) == Some("files") {
        return files(&backends, b, req, segments, query).await;
    }
    if method == Method::GET && segments == ["stream_url"] {
        let host = header_str(&req, "host").unwrap_or("localhost").to_owned();
        let credentials = Credentials::of(&req);
        return stream_url(&backends, b, credentials, &host, query.as_deref()).await;
    }
    let credentials = Credentials::of(&req);
    let request_id = header_str(&req, "x-request-id").map(str::to_owned);
    let body = if matches!(method, Method::POST | Method::PUT | Method::DELETE) {
        parse_json(&read_body(req).await?)?
    } else {
        Value::Null
    };
    // One trip to the blocking threads: who is calling, then the call.
    let sink = backends.sink.clone();
    let answer = run(&backends, move || {
        let ctx = Ctx {
            caller: caller(&b, &credentials)?,
            request_id,
        };
        if segments.first().map(String::as_str) == Some("webhooks") && segments.len() <= 2 {
            let id = segments.get(1).map(String::as_str);
            return b.webhooks(&ctx, &method, id, &body, sink.as_ref());
        }
        route(&b, &ctx, &method, &segments, query.as_deref(), &body)
    })
    .await?;
    Ok(json_response(answer.0, &answer.1))
}

/// `GET /v1/stream_url?filter=…`: a single-use URL of the notification stream, on the
/// host the client used and the stream listener's port.
async fn stream_url(
    backends: &Backends,
    b: Arc<Backend>,
    credentials: Credentials,
    host: &str,
    query: Option<&str>,
) -> Result<Response<Body>, EdsError> {
    let filter = match query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("filter="))
            .map(|v| mar_http::percent_decode(v, true))
    }) {
        None => json!({}),
        Some(f) => serde_json::from_str::<Value>(&f)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| EdsError::BadQuery("filter must be a JSON object".to_owned()))?,
    };
    let Some(addr) = backends.streams.addr() else {
        return Err(EdsError::NotFound(
            "the notification stream is not served here".to_owned(),
        ));
    };
    let caller = {
        let b = b.clone();
        run(backends, move || caller(&b, &credentials)).await?
    };
    let hostname = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let token = backends
        .streams
        .reserve(crate::stream::Subscription {
            backend: b.id.clone(),
            caller,
            filter,
        })
        .ok_or_else(|| EdsError::TooLarge("too many notification streams".to_owned()))?;
    Ok(json_response(
        200,
        &json!({
            "expiringUrl": format!("ws://{hostname}:{}/v1/stream?token={token}", addr.port()),
        }),
    ))
}

/// `/v1/files…`: uploads (multipart or chunked), file objects and download URLs.
async fn files(
    backends: &Backends,
    b: Arc<Backend>,
    req: Request<Body>,
    segments: Vec<String>,
    query: Option<String>,
) -> Result<Response<Body>, EdsError> {
    let credentials = Credentials::of(&req);
    let request_id = header_str(&req, "x-request-id").map(str::to_owned);
    let content_type = header_str(&req, "content-type").unwrap_or("").to_owned();
    let range = header_str(&req, "content-range").unwrap_or("").to_owned();
    let base = {
        let host = header_str(&req, "host").unwrap_or("localhost");
        let secure =
            mar_http::Connection::of(&req).is_some_and(|c| c.scheme == mar_http::Scheme::Https);
        format!("{}://{host}", if secure { "https" } else { "http" })
    };
    let method = req.method().clone();
    let body = match method {
        // Multipart uploads are larger; the Node SDK sends them without a Content-Type.
        Method::POST => read_body_up_to(req, crate::files::MAX_MULTIPART).await?,
        Method::PUT => read_body(req).await?,
        _ => Bytes::new(),
    };
    let boundary =
        crate::files::boundary(&content_type).or_else(|| crate::files::sniff_boundary(&body));
    let multipart = boundary.is_some();
    if method == Method::POST && !multipart && body.len() > MAX_BODY {
        return Err(EdsError::TooLarge(format!(
            "the body is larger than {} KiB",
            MAX_BODY >> 10
        )));
    }
    let (status, v) = run(backends, move || {
        let ctx = Ctx {
            caller: caller(&b, &credentials)?,
            request_id,
        };
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let id_ok = |id: &str| {
            if crate::ids::valid(id) {
                Ok(())
            } else {
                Err(EdsError::NotFound(format!("no file {id}")))
            }
        };
        match (method, s.as_slice()) {
            (Method::POST, ["files"]) if multipart => Ok((
                201,
                b.upload(&ctx, boundary.as_deref().unwrap_or(""), &body)?,
            )),
            (Method::POST, ["files"]) => Ok((201, b.begin_upload(&ctx, &parse_json(&body)?)?)),
            (Method::PUT, ["files", id, "chunk"]) => {
                id_ok(id)?;
                Ok((200, b.chunk(&ctx, id, &range, &body)?))
            }
            (Method::GET, ["files", id]) => {
                id_ok(id)?;
                Ok((200, b.get(&ctx, "files", id, &[])?))
            }
            (Method::GET, ["files", id, "download_url"]) => {
                id_ok(id)?;
                let variant = query.as_deref().and_then(|q| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("variant="))
                        .map(|v| mar_http::percent_decode(v, true))
                });
                Ok((200, b.download_url(&ctx, id, variant.as_deref(), &base)?))
            }
            _ => Err(EdsError::NotFound(format!(
                "no resource /v1/{}",
                segments.join("/")
            ))),
        }
    })
    .await?;
    Ok(json_response(status, &v))
}

/// `GET /v1/files/ID/download?backend=B&expires=T&signature=S`: the bytes, streamed.
async fn download(
    backends: &Backends,
    id: &str,
    query: Option<&str>,
) -> Result<Response<Body>, EdsError> {
    let param = |name: &str| {
        query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(|v| mar_http::percent_decode(v, true))
        })
    };
    let (Some(backend), Some(expires), Some(signature)) =
        (param("backend"), param("expires"), param("signature"))
    else {
        return Err(EdsError::Forbidden(
            "the download URL is incomplete".to_owned(),
        ));
    };
    let b = backends
        .get(&backend)
        .ok_or_else(|| EdsError::NotFound(format!("no backend with id {backend}")))?;
    let id = id.to_owned();
    let (path, name, kind) = run(backends, move || b.download(&id, &expires, &signature)).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| EdsError::NotFound(format!("the file's bytes are gone: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    use futures_util::TryStreamExt;
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(http_body::Frame::data);
    let mut r = Response::new(mar_http::boxed(http_body_util::StreamBody::new(stream)));
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&kind) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    let safe: String = name
        .chars()
        .filter(|c| (c.is_ascii_graphic() && *c != '"') || *c == ' ')
        .collect();
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// Runs blocking work on the backends' executor.
async fn run<T, F>(backends: &Backends, f: F) -> Result<T, EdsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, EdsError> + Send + 'static,
{
    backends
        .executor
        .spawn_blocking(f)
        .await
        .map_err(|e| EdsError::Storage(format!("a request's task failed: {e}")))?
}

fn kind_of(first: &str, second: Option<&str>) -> Result<String, EdsError> {
    match (first, second) {
        ("objects", Some(t)) => crate::types::type_name(t),
        ("users", _) => Ok("users".to_owned()),
        ("usergroups", _) => Ok("usergroups".to_owned()),
        _ => Err(EdsError::NotFound("no such resource".to_owned())),
    }
}

/// One call, on a blocking thread: the status and body.
fn route(
    b: &Backend,
    ctx: &Ctx,
    method: &Method,
    seg: &[String],
    query: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), EdsError> {
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    // `objects/T/…` and `users/…` share their shapes: split off the collection.
    let (kind, rest): (String, &[&str]) = match s.as_slice() {
        ["objects", t, rest @ ..] => (kind_of("objects", Some(t))?, rest),
        [c @ ("users" | "usergroups"), rest @ ..] => (kind_of(c, None)?, rest),
        ["user"] if method == Method::GET => return Ok((200, b.me(ctx)?)),
        ["search"] if method == Method::GET => return Ok((200, b.search(ctx, query)?)),
        ["stream_url"] => {
            return Err(EdsError::NotFound("GET /v1/stream_url".to_owned()));
        }
        ["object_types"] if method == Method::POST => return Ok((201, b.put_type(ctx, body)?)),
        ["object_types"] if method == Method::GET => return Ok((200, b.types(ctx)?)),
        _ => {
            return Err(EdsError::NotFound(format!(
                "no resource /v1/{}",
                seg.join("/")
            )));
        }
    };
    let id_ok = |id: &str| -> Result<(), EdsError> {
        if crate::ids::valid(id) {
            Ok(())
        } else {
            Err(EdsError::NotFound(format!("no {kind} object with id {id}")))
        }
    };
    match (method.clone(), rest) {
        (Method::POST, []) if kind == "users" => Ok((201, b.create_user(ctx, body)?)),
        (Method::POST, []) => Ok((201, b.create(ctx, &kind, body)?)),
        (Method::GET, []) => {
            let q = parse_params(query)?;
            Ok((200, b.list(ctx, &kind, &q, None)?))
        }
        (Method::GET, [id]) => {
            id_ok(id)?;
            let q = parse_params(query)?;
            Ok((200, b.get(ctx, &kind, id, &q.include)?))
        }
        (Method::PUT, [id]) => {
            id_ok(id)?;
            Ok((200, b.update(ctx, &kind, id, body)?))
        }
        (Method::DELETE, [id]) => {
            id_ok(id)?;
            b.delete(ctx, &kind, id)?;
            Ok((200, json!({})))
        }
        (Method::PUT, [id, "atomic"]) if kind.starts_with("objects.") => {
            id_ok(id)?;
            Ok((200, b.atomic(ctx, &kind, id, body)?))
        }
        (m, [id, "access"]) => {
            id_ok(id)?;
            let op = match m {
                Method::GET => AccessOp::Get,
                Method::PUT => AccessOp::Grant,
                Method::DELETE => AccessOp::Revoke,
                Method::POST => AccessOp::Replace,
                _ => return Err(EdsError::NotFound("no such resource".to_owned())),
            };
            Ok((200, b.access(ctx, &kind, id, op, body)?))
        }
        (m, [id, "members"]) if kind == "usergroups" => {
            id_ok(id)?;
            match m {
                Method::POST => Ok((200, b.member(ctx, id, body, true)?)),
                Method::DELETE => Ok((200, b.member(ctx, id, body, false)?)),
                Method::GET => {
                    let q = parse_params(query)?;
                    Ok((200, b.members(ctx, id, &q)?))
                }
                _ => Err(EdsError::NotFound("no such resource".to_owned())),
            }
        }
        _ => Err(EdsError::NotFound(format!(
            "no resource /v1/{}",
            seg.join("/")
        ))),
    }
}
