//! `/v1/apps/APP/config` (and the old API's `env_vars`): read and change config vars.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;

use super::{Admin, ApiError, ApiResult, Platform, existing};

pub(super) async fn get_config(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    let app = existing(&p, &app)?;
    Ok(Json(p.store.config(&app)?))
}

pub(super) async fn patch_config(
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
    let changes = raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s),
                other => Some(other.to_string()),
            };
            (k, v)
        })
        .collect::<BTreeMap<String, Option<String>>>();
    // An attached service's variables are the service's: detaching removes them.
    let owned = p.attached_vars(&app)?;
    if let Some((k, service)) = changes.keys().find_map(|k| owned.get(k).map(|s| (k, s))) {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            "Conflict",
            format!(
                "{k} comes from the attached service {service}; to change it, detach the service (mar services:detach {service} -a {app})"
            ),
        ));
    }
    p.apps.set_config(&app, changes).await?;
    Ok(Json(p.store.config(&app)?))
}
