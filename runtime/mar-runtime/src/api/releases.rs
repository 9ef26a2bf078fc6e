//! `/v1/apps/APP/releases` and `/v1/apps/APP/rollback`: the release history and rollbacks.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use mar_sdk::types::{ReleaseInfo, Results};

use super::{Admin, ApiError, ApiResult, Platform, existing, json_body};

pub(super) async fn list_releases(
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

pub(super) async fn show_release(
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

pub(super) async fn rollback(
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
