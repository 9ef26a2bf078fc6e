//! The platform host: the REST API under `/v1`, git over smart HTTP at `/APP.git/…`, and
//! `/healthz`. It is an in-process handler of the router, reached on the bare domain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body as AxumBody;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use mar_build::Output;
use mar_core::AppName;
use mar_git::GitServer;
use mar_logs::Logs;
use mar_router::{Body, Handler, ResponseFuture};
use mar_sdk::types::{
    AppInfo, BuildResult, CreateApp, ErrorBody, ErrorDetail, FormationEntry, LogEntry, ProcessInfo,
    ReleaseInfo, Results, RunResult,
};
use mar_store::{Store, StoreError};
use mar_supervisor::State as PState;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::apps::{Apps, DeployError};
use crate::paths::Paths;

/// Everything the platform's handlers share.
pub struct Platform {
    pub(crate) metrics: Arc<mar_router::Metrics>,
    pub(crate) store: Arc<Store>,
    pub(crate) logs: Arc<Logs>,
    pub(crate) apps: Arc<Apps>,
    pub(crate) git: GitServer,
    pub(crate) paths: Paths,
    pub(crate) token: String,
    /// How the git hook reaches this server: `http://127.0.0.1:PORT`.
    pub(crate) self_url: String,
    pub(crate) domain: String,
    pub(crate) port: u16,
}

/// An API error: a status and the hosted MWS error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                reason: self.reason.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchApp(_) | StoreError::NoSuchRelease { .. } => {
                Self::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
            }
            StoreError::AppExists(_) | StoreError::DomainTaken { .. } => {
                Self::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            StoreError::NoSuchDomain { .. } => {
                Self::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
            }
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Busy(_) => Self::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            DeployError::Store(s) => s.into(),
            DeployError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
            }
            DeployError::Boot(_) | DeployError::Build(_) | DeployError::ReleasePhase(_) => {
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "DeployFailed",
                    e.to_string(),
                )
            }
            DeployError::Io(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the admin token: `Bearer TOKEN`, or HTTP Basic with the token
/// as password (git sends that).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, cred) = value.split_once(' ').unwrap_or((value, ""));
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(cred.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Some(decoded) = base64_decode(cred) else {
            return false;
        };
        let pass = decoded.splitn(2, |b| *b == b':').nth(1).unwrap_or(&[]);
        return same(pass, token.as_bytes());
    }
    false
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

/// Extractor that admits only requests with the admin token.
pub struct Admin;

impl FromRequestParts<Arc<Platform>> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, p: &Arc<Platform>) -> Result<Self, ApiError> {
        if authorized(&parts.headers, &p.token) {
            Ok(Admin)
        } else if parts.headers.contains_key(header::AUTHORIZATION) {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "invalid API token: use the token that `mar auth:token` prints on the server",
            ))
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing API token: send `Authorization: Bearer TOKEN` (see `mar auth:token`)",
            ))
        }
    }
}

fn app_name(s: &str) -> ApiResult<AppName> {
    AppName::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn existing(p: &Platform, s: &str) -> ApiResult<AppName> {
    let app = app_name(s).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no such app: {s}"),
        )
    })?;
    p.store.get_app(&app)?;
    Ok(app)
}

impl Platform {
    fn app_info(&self, app: &AppName) -> ApiResult<AppInfo> {
        let stored = self.store.get_app(app)?;
        let release = self.store.current_release(app)?;
        let instances = self.apps.instances(app);
        let state = if instances.is_empty() {
            "idle"
        } else if instances
            .iter()
            .all(|i| matches!(i.state(), PState::Up { .. }))
        {
            "running"
        } else if instances
            .iter()
            .any(|i| matches!(i.state(), PState::Crashed { .. }))
        {
            "crashed"
        } else {
            "starting"
        };
        let mut structure = self.store.formation(app)?;
        if let Some(r) = &release {
            for t in r.process_types.keys() {
                structure.entry(t.clone()).or_insert(0);
            }
        }
        Ok(AppInfo {
            id: app.to_string(),
            name: app.to_string(),
            state: state.to_owned(),
            structure,
            web_url: self.apps.web_url(app),
            git_url: format!(
                "http://{}{}/{app}.git",
                self.domain,
                crate::apps::port_suffix(self.port)
            ),
            release: release.map(|r| r.version),
            created_at: stored.created_at,
        })
    }
}

/// The API's routes.
pub fn router(p: Arc<Platform>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/{app}", get(show_app).delete(destroy_app))
        .route("/v1/apps/{app}/config", get(get_config).patch(patch_config))
        .route("/v1/apps/{app}/env_vars", get(get_config).put(patch_config))
        .route("/v1/apps/{app}/releases", get(list_releases))
        .route("/v1/apps/{app}/releases/{version}", get(show_release))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/ps", get(list_processes))
        .route("/v1/apps/{app}/ps/restart", post(restart_processes))
        .route("/v1/apps/{app}/restart", post(restart_processes))
        .route(
            "/v1/apps/{app}/formation",
            get(get_formation).patch(patch_formation),
        )
        .route("/v1/apps/{app}/scale", post(patch_formation))
        .route("/v1/apps/{app}/run", post(run_command))
        .route("/v1/apps/{app}/domains", get(list_domains).post(add_domain))
        .route(
            "/v1/apps/{app}/domains/{name}",
            axum::routing::delete(remove_domain),
        )
        .route("/v1/apps/{app}/exec", post(exec_command))
        .route("/v1/apps/{app}/logs", get(get_logs))
        .route("/v1/apps/{app}/logs/stream", get(stream_logs))
        .route("/v1/apps/{app}/builds", post(create_build))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such API endpoint")
        })
        .with_state(p)
}

/// Prometheus metrics of the router. Like `/healthz`, it needs no token, so a scraper needs no
/// secret; it shows app names and traffic counts only.
async fn metrics(State(p): State<Arc<Platform>>) -> Response {
    let mut resp = p.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn list_apps(_: Admin, State(p): State<Arc<Platform>>) -> ApiResult<Json<Results<AppInfo>>> {
    let mut results = Vec::new();
    for a in p.store.list_apps()? {
        results.push(p.app_info(&a.name)?);
    }
    Ok(Json(Results { results }))
}

async fn create_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AppInfo>)> {
    // Old clients send JSON without a Content-Type, so parse whatever arrives.
    let req: CreateApp = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"name\": \"APP\"}}: {e}")))?;
    let app = app_name(&req.name)?;
    p.store.create_app(&app, p.apps.uid_base())?;
    p.git.create_repo(&app).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    p.logs.append(&app, "mar[api]", "App created");
    p.apps.publish(&app);
    Ok((StatusCode::CREATED, Json(p.app_info(&app)?)))
}

async fn show_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<AppInfo>> {
    let app = existing(&p, &app)?;
    Ok(Json(p.app_info(&app)?))
}

async fn destroy_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    let _guard = p.apps.lock(&app)?;
    p.apps.stop_app(&app).await;
    p.store.delete_app(&app)?;
    p.apps.publish_domains();
    p.metrics.remove(&app);
    let _ = p.git.delete_repo(&app);
    p.logs.remove(&app);
    let _ = std::fs::remove_dir_all(p.paths.app(&app));
    Ok(Json(serde_json::json!({})))
}

async fn get_config(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    let app = existing(&p, &app)?;
    Ok(Json(p.store.config(&app)?))
}

/// Config var names must be usable as environment variable names and as file names in the
/// buildpack ENV_DIR.
fn valid_var(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

async fn patch_config(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    let app = existing(&p, &app)?;
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a JSON object of NAME: value (null unsets): {e}"
        ))
    })?;
    let mut changes = BTreeMap::new();
    for (k, v) in raw {
        if !valid_var(&k) {
            return Err(ApiError::bad_request(format!(
                "invalid config var name {k:?}: use letters, digits and '_', not starting with a digit"
            )));
        }
        let v = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s),
            other => Some(other.to_string()),
        };
        if let Some(v) = &v {
            crate::settings::validate(&k, v).map_err(ApiError::bad_request)?;
        }
        changes.insert(k, v);
    }
    p.apps.set_config(&app, changes).await?;
    Ok(Json(p.store.config(&app)?))
}

async fn list_releases(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<ReleaseInfo>>> {
    let app = existing(&p, &app)?;
    let current = p.store.current_release(&app)?.map(|r| r.version);
    let results = p
        .store
        .releases(&app)?
        .into_iter()
        .map(|r| ReleaseInfo {
            // The list stays small: config vars only in the single-release view.
            config: None,
            ..release_info(r, current)
        })
        .collect();
    Ok(Json(Results { results }))
}

async fn list_processes(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<ProcessInfo>>> {
    let app = existing(&p, &app)?;
    let results = p
        .apps
        .instances(&app)
        .into_iter()
        .map(|i| {
            let spec = i.spec();
            let (pid, port, uptime) = match i.state() {
                PState::Up { pid, port, since } => {
                    (Some(pid), port, since.elapsed().ok().map(|d| d.as_secs()))
                }
                _ => (None, None, None),
            };
            ProcessInfo {
                dyno: spec.dyno(),
                process_type: spec.process_type.clone(),
                state: i.state().name().to_owned(),
                command: spec.command.clone(),
                release: spec.release,
                port,
                pid,
                uptime_secs: uptime,
                restarts: i.restarts(),
                memory_bytes: i.memory(),
            }
        })
        .collect();
    Ok(Json(Results { results }))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    limit: Option<String>,
    offset: Option<String>,
    lines: Option<String>,
    ps: Option<String>,
    source: Option<String>,
}

impl LogQuery {
    /// The `ps` and `source` filters as a predicate; `ps=web` matches every web instance.
    fn filter(&self) -> ApiResult<impl Fn(&mar_logs::LogLine) -> bool + Send + Sync + 'static> {
        let source = match self.source.as_deref() {
            None | Some("") => None,
            Some(s @ ("app" | "mar")) => Some(format!("{s}[")),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "source must be app or mar, not {other:?}"
                )));
            }
        };
        let ps = self.ps.clone().filter(|p| !p.is_empty());
        Ok(move |l: &mar_logs::LogLine| {
            let inner = l
                .source
                .split_once('[')
                .map(|(_, r)| r.trim_end_matches(']'))
                .unwrap_or("");
            source
                .as_ref()
                .is_none_or(|s| l.source.starts_with(s.as_str()))
                && ps.as_ref().is_none_or(|p| {
                    inner == p || (!p.contains('.') && inner.split('.').next() == Some(p.as_str()))
                })
        })
    }
}

fn number(name: &str, v: Option<&String>, default: usize, max: usize) -> ApiResult<usize> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be a whole number from 0 to {max}, not {s:?}"
                ))
            }),
    }
}

async fn get_logs(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Results<LogEntry>>> {
    let app = existing(&p, &app)?;
    let limit = number("limit", q.limit.as_ref(), 100, 100_000)?;
    let offset = number("offset", q.offset.as_ref(), 0, usize::MAX)?;
    let keep = q.filter()?;
    let lines = p
        .logs
        .recent_where(&app, limit, offset, keep)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
    let results = lines
        .into_iter()
        .map(|l| LogEntry {
            log: format!("{}: {}", l.source, l.text),
            time: l.time,
        })
        .collect();
    Ok(Json(Results { results }))
}

async fn stream_logs(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    let n = number("lines", q.lines.as_ref(), 100, 100_000)?;
    let live = p.logs.subscribe(&app).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    let keep = Arc::new(q.filter()?);
    let k2 = keep.clone();
    let backlog = p
        .logs
        .recent_where(&app, n, 0, move |l| k2(l))
        .unwrap_or_default();
    let head = futures_util::stream::iter(
        backlog
            .into_iter()
            .map(|l| Ok::<_, std::io::Error>(Bytes::from(l.render() + "\n"))),
    );
    let tail = futures_util::stream::unfold((live, keep), |(mut rx, keep)| async move {
        loop {
            let text = match rx.recv().await {
                Ok(line) if !keep(&line) => continue,
                Ok(line) => line.render() + "\n",
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("... {n} lines skipped (reader too slow) ...\n")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(Bytes::from(text)), (rx, keep)));
        }
    });
    let mut resp = AxumBody::from_stream(head.chain(tail)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

#[derive(serde::Deserialize)]
struct BuildQuery {
    commit: Option<String>,
}

async fn show_release(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseInfo>> {
    let app = existing(&p, &app)?;
    let version: i64 = version.trim_start_matches('v').parse().map_err(|_| {
        ApiError::bad_request(format!("{version:?} is not a release version like 3 or v3"))
    })?;
    let current = p.store.current_release(&app)?.map(|r| r.version);
    let r = p.store.release(&app, version)?;
    Ok(Json(release_info(r, current)))
}

fn release_info(r: mar_store::Release, current: Option<i64>) -> ReleaseInfo {
    ReleaseInfo {
        current: Some(r.version) == current,
        version: r.version,
        description: r.description,
        created_at: r.created_at,
        commit: r.commit,
        slug_size: r.slug_size,
        process_types: r.process_types,
        buildpacks: r.buildpacks,
        config: Some(r.config),
    }
}

/// Reads a JSON object body whatever its Content-Type (old clients send none); empty means `{}`.
fn json_body(body: &Bytes) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON object: {e}")))
}

async fn rollback(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ReleaseInfo>> {
    let app = existing(&p, &app)?;
    let version = match json_body(&body)?.get("version") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .or_else(|| {
                    v.as_str()
                        .and_then(|s| s.trim_start_matches('v').parse().ok())
                })
                .ok_or_else(|| {
                    ApiError::bad_request(format!("version must be a release number, not {v}"))
                })?,
        ),
    };
    let r = p.apps.rollback(&app, version).await?;
    let current = Some(r.version);
    Ok(Json(release_info(r, current)))
}

async fn restart_processes(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    let body = json_body(&body)?;
    let target = body
        .get("target")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty());
    let restarted = p.apps.restart(&app, target).await?;
    Ok(Json(serde_json::json!({ "restarted": restarted })))
}

fn domain_results(p: &Platform, app: &AppName) -> ApiResult<Results<serde_json::Value>> {
    let results = p
        .store
        .all_domains()?
        .into_iter()
        .filter(|(_, a)| a == app.as_str())
        .map(|(name, _)| serde_json::json!({ "name": name }))
        .collect();
    Ok(Results { results })
}

async fn list_domains(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<serde_json::Value>>> {
    let app = existing(&p, &app)?;
    Ok(Json(domain_results(&p, &app)?))
}

fn hostname(p: &Platform, name: &str) -> ApiResult<mar_core::Hostname> {
    let host = mar_core::Hostname::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let platform = &p.domain;
    if host.as_str() == platform || host.as_str().ends_with(&format!(".{platform}")) {
        return Err(ApiError::bad_request(format!(
            "{host} is under the platform's own domain {platform}; apps get APP.{platform} already"
        )));
    }
    Ok(host)
}

/// `POST /v1/apps/APP/domains {"name": "www.example.com"}` (the old MAR API's shape).
async fn add_domain(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Results<serde_json::Value>>)> {
    let app = existing(&p, &app)?;
    let name = command_of(&body, "name")?;
    let host = hostname(&p, &name)?;
    p.store.add_domain(&app, &host)?;
    p.apps.publish_domains();
    p.logs
        .append(&app, "mar[api]", &format!("Added domain {host}"));
    Ok((StatusCode::CREATED, Json(domain_results(&p, &app)?)))
}

async fn remove_domain(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<Results<serde_json::Value>>> {
    let app = existing(&p, &app)?;
    let host =
        mar_core::Hostname::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    p.store.remove_domain(&app, &host)?;
    p.apps.publish_domains();
    p.logs
        .append(&app, "mar[api]", &format!("Removed domain {host}"));
    Ok(Json(domain_results(&p, &app)?))
}

fn formation_results(p: &Platform, app: &AppName) -> ApiResult<Results<FormationEntry>> {
    let formation = p.store.formation(app)?;
    let types = p
        .store
        .current_release(app)?
        .map(|r| r.process_types)
        .unwrap_or_default();
    let mut names: Vec<&String> = formation
        .keys()
        .chain(types.keys())
        .filter(|t| *t != "release")
        .collect();
    names.sort();
    names.dedup();
    let results = names
        .into_iter()
        .map(|t| FormationEntry {
            process_type: t.clone(),
            quantity: formation.get(t).copied().unwrap_or(0),
            command: types.get(t).cloned(),
        })
        .collect();
    Ok(Results { results })
}

async fn get_formation(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<FormationEntry>>> {
    let app = existing(&p, &app)?;
    Ok(Json(formation_results(&p, &app)?))
}

/// Accepts `{"web": 3}`, the old MAR API's `{"web": "3"}`, and Heroku's
/// `{"updates": [{"type": "web", "quantity": 3}]}`.
async fn patch_formation(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Results<FormationEntry>>> {
    let app = existing(&p, &app)?;
    let body = json_body(&body)?;
    let quantity = |t: &str, v: &serde_json::Value| -> ApiResult<u32> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("quantity of {t} must be a whole number, not {v}"))
            })
    };
    let mut changes = BTreeMap::new();
    if let Some(updates) = body.get("updates").and_then(|u| u.as_array()) {
        for u in updates {
            let t = u
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| ApiError::bad_request("each update needs a type"))?;
            let q = u
                .get("quantity")
                .ok_or_else(|| ApiError::bad_request("each update needs a quantity"))?;
            changes.insert(t.to_owned(), quantity(t, q)?);
        }
    } else {
        for (t, v) in &body {
            changes.insert(t.clone(), quantity(t, v)?);
        }
    }
    if changes.is_empty() {
        return Err(ApiError::bad_request("nothing to scale: send {\"web\": 2}"));
    }
    p.apps.scale(&app, changes).await?;
    Ok(Json(formation_results(&p, &app)?))
}

fn command_of(body: &Bytes, key: &str) -> ApiResult<String> {
    json_body(body)?
        .get(key)
        .and_then(|c| c.as_str())
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("expected {{\"{key}\": \"COMMAND\"}}")))
}

/// `POST /v1/apps/APP/run`: a one-off process; output streams back, the last line carries the
/// exit status. Hanging up kills the process.
async fn run_command(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    let command = command_of(&body, "command")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let cancel = CancellationToken::new();
    // Hanging up kills the process. The watcher holds a sender, so it must be stopped once the
    // run is over or the stream would never end.
    let watcher = {
        let (tx, cancel) = (tx.clone(), cancel.clone());
        tokio::spawn(async move {
            tx.closed().await;
            cancel.cancel();
        })
    };
    tokio::spawn(async move {
        let result = match p.apps.run_command(&app, &command, tx.clone(), cancel).await {
            Ok(code) => RunResult {
                exit_code: Some(code),
                error: None,
            },
            Err(e) => RunResult {
                exit_code: None,
                error: Some(e.to_string()),
            },
        };
        watcher.abort();
        let _ = tx.send(format!(
            "{}{}",
            mar_sdk::types::BUILD_RESULT_MARK,
            serde_json::to_string(&result).unwrap_or_default()
        ));
    });
    Ok(line_stream(rx))
}

/// The old MAR API's `POST /apps/<id>/exec {"cmd"}` → `{"stdout","stderr"}`. Output of both
/// streams arrives interleaved in `stdout`, as a terminal would show it.
async fn exec_command(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    let command = command_of(&body, "cmd")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let collect = tokio::spawn(async move {
        let mut out = String::new();
        while let Some(l) = rx.recv().await {
            out.push_str(&l);
            out.push('\n');
        }
        out
    });
    let code = p
        .apps
        .run_command(&app, &command, tx, CancellationToken::new())
        .await?;
    let stdout = collect.await.unwrap_or_default();
    Ok(Json(
        serde_json::json!({ "stdout": stdout, "stderr": "", "exitCode": code }),
    ))
}

/// A streamed `text/plain` response of the lines sent to `rx`, one per line, until every
/// sender is gone.
fn line_stream(rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Response {
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|l| (Ok::<_, std::io::Error>(Bytes::from(l + "\n")), rx))
    });
    let mut resp = AxumBody::from_stream(lines).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `POST /v1/apps/APP/builds`: the body is a tar of the source. Builds and deploys, streaming
/// the output; the last line carries the result. Called by the git hook during a push.
async fn create_build(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    Query(q): Query<BuildQuery>,
    body: AxumBody,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    let commit = q.commit.unwrap_or_default();
    if !commit.bytes().all(|b| b.is_ascii_hexdigit()) || commit.len() > 64 {
        return Err(ApiError::bad_request(
            "commit must be a hexadecimal git object id",
        ));
    }
    let guard = p.apps.lock(&app)?;
    let t_receive = Instant::now();
    let id = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
        app
    );
    let work = p.paths.builds().join(&id);
    let src = work.join("src");
    let io_err = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("receiving source: {e}"),
        )
    };
    std::fs::create_dir_all(&src).map_err(io_err)?;
    let tar_path = work.join("source.tar");
    let mut file = tokio::fs::File::create(&tar_path).await.map_err(io_err)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("source upload broke off: {e}")))?;
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.flush().await.map_err(io_err)?;
    drop(file);
    let (tp, sp) = (tar_path.clone(), src.clone());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        // `unpack` refuses entries that would land outside `sp` (absolute paths, `..`).
        tar::Archive::new(std::fs::File::open(&tp)?).unpack(&sp)?;
        std::fs::remove_file(&tp)
    })
    .await
    .map_err(|e| io_err(std::io::Error::other(e.to_string())))?
    .map_err(|e| ApiError::bad_request(format!("source is not a valid tar archive: {e}")))?;
    let received = t_receive.elapsed();

    let (out, rx) = Output::channel();
    let cancel = CancellationToken::new();
    let watcher = {
        let (out, cancel) = (out.clone(), cancel.clone());
        tokio::spawn(async move {
            // The pusher hung up (Ctrl-C): stop the build rather than deploy a commit git will
            // not record.
            out.closed().await;
            cancel.cancel();
        })
    };
    let p2 = p.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let source = crate::apps::Source {
            build_dir: src,
            work_dir: work.clone(),
            commit,
            received,
        };
        let res = p2.apps.deploy_source(&app, source, &out, &cancel).await;
        let result = match &res {
            Ok(d) => BuildResult {
                ok: true,
                release: Some(d.release.version),
            },
            Err(e) => {
                for line in e.to_string().lines() {
                    out.line(format!(" !     {line}"));
                }
                out.line(" !     Push rejected; the previous release keeps serving.");
                p2.logs
                    .append(&app, "mar[build]", &format!("Build failed: {e}"));
                BuildResult {
                    ok: false,
                    release: None,
                }
            }
        };
        out.line(format!(
            "{}{}",
            mar_sdk::types::BUILD_RESULT_MARK,
            serde_json::to_string(&result).unwrap_or_default()
        ));
        watcher.abort();
        let _ = tokio::fs::remove_dir_all(&work).await;
    });
    Ok(line_stream(rx))
}

/// The platform as the router's in-process handler.
pub struct PlatformHandler {
    pub(crate) platform: Arc<Platform>,
    pub(crate) api: axum::Router,
}

fn plain(status: StatusCode, text: String) -> http::Response<Body> {
    let mut r = http::Response::new(mar_router::full(text + "\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl PlatformHandler {
    async fn git(&self, req: http::Request<Body>, client: SocketAddr) -> http::Response<Body> {
        let p = &self.platform;
        let (app, endpoint) = match mar_git::parse_git_path(req.uri().path()) {
            Ok(x) => x,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("mini-MAR: {e}")),
        };
        if !authorized(req.headers(), &p.token) {
            let mut r = plain(
                StatusCode::UNAUTHORIZED,
                "mini-MAR: authentication failed: use the API token (`mar auth:token`) as the password; `mar git:remote APP` sets up a remote that does".to_owned(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mini-MAR\""),
            );
            return r;
        }
        if p.store.get_app(&app).is_err() {
            return plain(
                StatusCode::NOT_FOUND,
                format!("mini-MAR: no such app {app}: create it with `mar apps:create {app}`"),
            );
        }
        let env = [
            ("MAR_HOOK_URL".to_owned(), p.self_url.clone()),
            ("MAR_HOOK_TOKEN".to_owned(), p.token.clone()),
            ("MAR_APP".to_owned(), app.to_string()),
        ];
        match p.git.serve(&app, endpoint, req, client, &env).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                http::Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
            }
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("mini-MAR: git failed: {e}"),
            ),
        }
    }
}

impl Handler for PlatformHandler {
    fn call(&self, mut req: http::Request<Body>) -> ResponseFuture {
        let path = req.uri().path().to_owned();
        if path.contains(".git/") || path.ends_with(".git") {
            let client = mar_http::Connection::of(&req)
                .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.client);
            let this = PlatformHandler {
                platform: self.platform.clone(),
                api: self.api.clone(),
            };
            return Box::pin(async move { this.git(req, client).await });
        }
        // Old Qt Cloud clients end collection URLs with a slash (`/v1/apps/<id>/`).
        if path.len() > 1 && path.ends_with('/') {
            let trimmed = path.trim_end_matches('/');
            let pq = match req.uri().query() {
                Some(q) => format!("{trimmed}?{q}"),
                None => trimmed.to_owned(),
            };
            if let Ok(uri) = pq.parse() {
                *req.uri_mut() = uri;
            }
        }
        let api = self.api.clone();
        let req = req.map(axum::body::Body::new);
        Box::pin(async move {
            use tower::ServiceExt;
            match api.oneshot(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    http::Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
                }
                Err(never) => match never {},
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_bearer_and_basic() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER t0k"),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0x"),
        );
        assert!(!authorized(&h, "t0k"));
        // "git:t0k"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnQwaw=="),
        );
        assert!(authorized(&h, "t0k"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnQwaA=="),
        );
        assert!(!authorized(&h, "t0k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(!authorized(&h, "t0k"));
    }

    #[test]
    fn var_names() {
        assert!(valid_var("GREETING"));
        assert!(valid_var("_a1"));
        assert!(!valid_var("1A"));
        assert!(!valid_var("A-B"));
        assert!(!valid_var("../x"));
        assert!(!valid_var(""));
    }
}
