//! `/v1/apps` and `/v1/apps/APP`: list, create, show and destroy apps.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use mar_core::AppName;
use mar_sdk::types::{AppInfo, CreateApp, LimitsInfo, Results, WasmInfo};

use super::{Admin, ApiError, ApiResult, Platform, app_name, existing};

impl Platform {
    /// The API's view of an app: its state, formation (every process type of its release,
    /// scaled or not), URLs and current release.
    fn app_info(&self, app: &AppName) -> ApiResult<AppInfo> {
        let stored = self.store.get_app(app)?;
        let release = self.store.current_release(app)?;
        let state = self.apps.state(app);
        let mut structure = self.store.formation(app)?;
        if let Some(r) = &release {
            for t in r.process_types.keys() {
                structure.entry(t.clone()).or_insert(0);
            }
        }
        let config = self.store.config(app)?;
        let settings = self.apps.settings(&config);
        let l = &settings.limits;
        let limits = LimitsInfo {
            memory_bytes: l.memory_bytes.unwrap_or_default(),
            cpu_millis: l.cpu_millis.unwrap_or_default(),
            pids: l.pids.unwrap_or_default(),
            nofile: l.nofile.unwrap_or_default(),
            disk_bytes: settings.disk_bytes,
            set: crate::settings::LIMIT_VARS
                .iter()
                .filter(|k| config.contains_key(**k))
                .map(|k| (*k).to_owned())
                .collect(),
        };
        Ok(AppInfo {
            limits: Some(limits),
            id: app.to_string(),
            name: app.to_string(),
            state: state.to_owned(),
            structure,
            web_url: self.apps.web_url(app),
            secure_url: self.apps.secure_url(app),
            git_url: format!(
                "http://{}{}/{app}.git",
                self.domain,
                crate::apps::port_suffix(self.port)
            ),
            release: release.map(|r| r.version),
            created_at: stored.created_at,
            wasm: self.apps.wasm(app).map(|w| {
                let l = w.limits();
                WasmInfo {
                    interface: w.interface().as_str().to_owned(),
                    description: w.interface().describe().to_owned(),
                    timeout_secs: l.timeout.as_secs(),
                    memory_bytes: l.memory as u64,
                    concurrency: l.concurrency,
                    instance_reuse: l.reuse,
                }
            }),
        })
    }
}

pub(super) async fn list_apps(
    _: Admin,
    State(p): State<Arc<Platform>>,
) -> ApiResult<Json<Results<AppInfo>>> {
    let mut results = Vec::new();
    for a in p.store.list_apps()? {
        results.push(p.app_info(&a.name)?);
    }
    Ok(Json(Results { results }))
}

pub(super) async fn create_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AppInfo>)> {
    // Old clients send JSON without a Content-Type, so parse whatever arrives.
    let req: CreateApp = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"name\": \"APP\"}}: {e}")))?;
    let app = app_name(&req.name)?;
    p.apps.create(&app, &p.git)?;
    Ok((StatusCode::CREATED, Json(p.app_info(&app)?)))
}

pub(super) async fn show_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<AppInfo>> {
    let app = existing(&p, &app)?;
    Ok(Json(p.app_info(&app)?))
}

pub(super) async fn destroy_app(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    p.apps.destroy(&app, &p.git, &p.metrics).await?;
    p.relink_gateways();
    Ok(Json(serde_json::json!({})))
}
