//! The platform host: the REST API under `/v1`, git over smart HTTP at `/APP.git/…`, and
//! `/healthz`. It is an in-process handler of the router, reached on the bare domain.

mod accounts;
mod app_metrics;
mod apps;
mod auth;
mod builds;
mod config;
mod console;
mod cors;
mod domains;
mod logs;
mod processes;
mod releases;
mod services;
mod terminal;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use mar_core::AppName;
use mar_git::GitServer;
use mar_logs::Logs;
use mar_router::{Body, Handler, ResponseFuture};
use mar_sdk::types::{ErrorBody, ErrorDetail};
use mar_store::{Store, StoreError};

use crate::apps::{Apps, DeployError};
use apps::{create_app, destroy_app, list_apps, show_app};
use auth::{Admin, authorized};
use builds::create_build;
use config::{get_config, patch_config};
use domains::{add_domain, list_domains, remove_domain};
use logs::{get_logs, stream_logs};
use processes::{
    exec_command, get_formation, list_processes, patch_formation, restart_processes, run_command,
};
use releases::{list_releases, rollback, show_release};

pub(crate) use console::SESSION_LIFETIME as CONSOLE_SESSION_LIFETIME;

/// Everything the platform's handlers share.
pub struct Platform {
    /// Cancelled when `mar serve` shuts down: endless answers (a followed log) end then, so
    /// they never hold the shutdown up.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) metrics: Arc<mar_router::Metrics>,
    pub(crate) store: Arc<Store>,
    pub(crate) logs: Arc<Logs>,
    pub(crate) apps: Arc<Apps>,
    pub(crate) git: GitServer,
    pub(crate) token: String,
    /// Reads `/metrics` only.
    pub(crate) metrics_token: String,
    /// How the git hook reaches this server: `http://127.0.0.1:PORT`.
    pub(crate) self_url: String,
    pub(crate) domain: String,
    pub(crate) port: u16,
    /// The MWS gateways (service instances of kind `mws`), served under `/v1/gateways/`.
    pub(crate) gateways: Arc<mar_mws::Gateways>,
    /// The EDS backends (service instances of kind `eds`).
    pub(crate) backends: Arc<mar_eds::Backends>,
    /// The last hour of each app's figures, for the console's charts.
    pub(crate) history: Arc<crate::metrics_history::MetricsHistory>,
    /// Each app's builds and their output.
    pub(crate) builds: Arc<crate::build_logs::BuildLogs>,
    /// The web console's sign-in sessions (in memory).
    pub(crate) console: mar_console::Sessions,
    /// Failed console sign-ins per address.
    pub(crate) sign_in_limit: mar_console::SignInLimit,
    /// Where the console's password hash is kept, when one is set.
    pub(crate) console_password: std::path::PathBuf,
    /// Password checks running at once (argon2 takes tens of milliseconds of a core and
    /// 19 MiB each): more wait.
    pub(crate) password_checks: tokio::sync::Semaphore,
    /// Account tokens of the account API (in memory).
    pub(crate) account_tokens: accounts::AccountTokens,
    /// The apps each gateway is attached to, for its forwarder.
    pub(crate) gateway_links: Arc<crate::gateway_links::GatewayLinks>,
}

impl Platform {
    /// Reads the gateways' attachments again after a change to them.
    pub(crate) fn relink_gateways(&self) {
        if let Err(e) = self.gateway_links.reload(&self.store) {
            tracing::error!("cannot reload the gateways' attachments: {e}");
        }
    }
}

/// An API error: a status and the hosted MWS error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    /// Its status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn new(
        status: StatusCode,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
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
            StoreError::NoSuchApp(_)
            | StoreError::NoSuchRelease { .. }
            | StoreError::NoSuchService(_)
            | StoreError::NoSuchAccount(_)
            | StoreError::NotAttached { .. } => {
                Self::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
            }
            StoreError::AppExists(_)
            | StoreError::DomainTaken { .. }
            | StoreError::ServiceExists(_)
            | StoreError::AccountExists(_)
            | StoreError::AlreadyAttached { .. } => {
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
            DeployError::BadInput(m) => Self::bad_request(m),
            DeployError::TooLarge(_) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "TooLarge", e.to_string())
            }
            DeployError::Boot(_) | DeployError::Build(_) | DeployError::ReleasePhase(_) => {
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "DeployFailed",
                    e.to_string(),
                )
            }
            DeployError::Io(_) | DeployError::Receive(_) | DeployError::Git(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// An app name from a request; a malformed one is a bad request.
fn app_name(s: &str) -> ApiResult<AppName> {
    AppName::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// An app that exists; a malformed name is reported as no such app, since none can have it.
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

/// The API's routes.
pub fn router(p: Arc<Platform>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(console::page))
        .route("/console/{file}", get(console::page))
        .route(
            "/console/session",
            get(console::show_session)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .route(
            "/v1/console/password",
            get(console::password_state)
                .put(console::set_password)
                .delete(console::clear_password),
        )
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list_apps).post(create_app))
        .route(
            "/v1/services",
            get(services::list_services).post(services::create_service),
        )
        .route(
            "/v1/services/{name}",
            get(services::show_service).delete(services::destroy_service),
        )
        .route(
            "/v1/accounts",
            get(accounts::list_accounts).post(accounts::create_account),
        )
        .route(
            "/v1/accounts/{email}",
            axum::routing::delete(accounts::destroy_account),
        )
        .route(
            "/v1/account/auth/oauth2/token",
            post(accounts::account_token),
        )
        .route(
            "/v1/account/apps",
            get(accounts::list_apps).post(accounts::create_app),
        )
        .route(
            "/v1/account/apps/{id}",
            get(accounts::show_app).delete(accounts::destroy_app),
        )
        .route("/v1/services/{name}/attachments", post(services::attach))
        .route("/v1/services/{name}/links", post(services::link))
        .route(
            "/v1/services/{name}/links/{gateway}",
            axum::routing::delete(services::unlink),
        )
        .route(
            "/v1/services/{name}/attachments/{app}",
            axum::routing::delete(services::detach),
        )
        .route("/v1/apps/{app}/attachments", get(services::app_attachments))
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
        .route("/v1/apps/{app}/terminal", get(terminal::open_terminal))
        .route("/v1/apps/{app}/domains", get(list_domains).post(add_domain))
        .route(
            "/v1/apps/{app}/domains/{name}",
            axum::routing::delete(remove_domain),
        )
        .route("/v1/apps/{app}/exec", post(exec_command))
        .route("/v1/apps/{app}/logs", get(get_logs))
        .route("/v1/apps/{app}/metrics", get(app_metrics::app_metrics))
        .route("/v1/apps/{app}/logs/stream", get(stream_logs))
        .route(
            "/v1/apps/{app}/builds",
            post(create_build).get(builds::list_builds),
        )
        .route(
            "/v1/apps/{app}/builds/{id}/output",
            get(builds::build_output),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such API endpoint")
        })
        .with_state(p)
}

/// Prometheus metrics of the router. They name every app and its traffic, which is nobody
/// else's business: they need the admin token or the metrics token (`mar auth:token
/// --metrics`), which a scraper can be given without the power of the admin token.
async fn metrics(State(p): State<Arc<Platform>>, headers: http::HeaderMap) -> Response {
    if !authorized(&headers, &p.token) && !authorized(&headers, &p.metrics_token) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "/metrics needs the metrics token (`mar auth:token --metrics`) or the admin token as `Authorization: Bearer TOKEN`",
        )
        .into_response();
    }
    let mut resp = p.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Reads a JSON object body whatever its Content-Type (old clients send none); empty means `{}`.
fn json_body(body: &Bytes) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON object: {e}")))
}

/// The non-blank string `key` of a JSON object body (a command, a domain name).
fn command_of(body: &Bytes, key: &str) -> ApiResult<String> {
    json_body(body)?
        .get(key)
        .and_then(|c| c.as_str())
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("expected {{\"{key}\": \"COMMAND\"}}")))
}

/// A streamed `text/plain` response of the lines sent to `rx`, one per line, until every
/// sender is gone.
fn line_stream(rx: tokio::sync::mpsc::Receiver<String>) -> Response {
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

/// The services' APIs: the MWS gateways' API and WebSocket endpoint (bare domain, IP hosts,
/// mws.DOMAIN) and the EDS backends' API (eds.DOMAIN too, by Enginio-Backend-Id), open to pages
/// of any origin (see `cors`). Neither blocks the thread that calls it (their SQLite and
/// argon2 work runs on their own executors, and what MWS keeps in the platform's store is
/// written on a blocking thread), so the router calls this on its own thread rather
/// than through the platform's runtime: a publish or a read saves a thread hop.
pub(crate) struct ServicesHandler {
    pub(crate) platform: Arc<Platform>,
}

impl ServicesHandler {
    /// Whether a request to the platform's host is the services'.
    pub(crate) fn serves(path: &str) -> bool {
        cors::open_to_browsers(path)
    }
}

impl Handler for ServicesHandler {
    fn call(&self, req: http::Request<Body>) -> ResponseFuture {
        if cors::is_preflight(req.method()) {
            return Box::pin(async { cors::preflight() });
        }
        let path = req.uri().path();
        if path == "/sdk/mar.js" {
            return Box::pin(async { cors::sdk() });
        }
        let answer = if mar_mws::Gateways::serves(path) {
            mar_mws::MwsHandler::new(self.platform.gateways.clone()).call(req)
        } else {
            mar_eds::EdsHandler::new(self.platform.backends.clone()).call(req)
        };
        Box::pin(async move { cors::allow(answer.await) })
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
        if ServicesHandler::serves(&path) {
            return ServicesHandler {
                platform: self.platform.clone(),
            }
            .call(req);
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
