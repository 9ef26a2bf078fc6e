//! `/v1/apps/APP/domains`: an app's custom domains.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use mar_core::AppName;
use mar_sdk::types::Results;

use super::{Admin, ApiResult, Platform, command_of, existing};

/// The app's custom domains as `{"results": [{"name": …}]}` (the old MAR API's shape).
fn domain_results(p: &Platform, app: &AppName) -> ApiResult<Results<serde_json::Value>> {
    let results = p
        .apps
        .domains(app)?
        .into_iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    Ok(Results { results })
}

pub(super) async fn list_domains(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<serde_json::Value>>> {
    let app = existing(&p, &app)?;
    Ok(Json(domain_results(&p, &app)?))
}

/// `POST /v1/apps/APP/domains {"name": "www.example.com"}` (the old MAR API's shape).
pub(super) async fn add_domain(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Results<serde_json::Value>>)> {
    let app = existing(&p, &app)?;
    let name = command_of(&body, "name")?;
    p.apps.add_domain(&app, &name)?;
    Ok((StatusCode::CREATED, Json(domain_results(&p, &app)?)))
}

pub(super) async fn remove_domain(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<Results<serde_json::Value>>> {
    let app = existing(&p, &app)?;
    p.apps.remove_domain(&app, &name)?;
    Ok(Json(domain_results(&p, &app)?))
}
