//! `/v1/services`: service instances (MWS gateways so far; EDS backends later): create, list,
//! show and destroy. A gateway's own API lives under `/v1/gateways/ID/` (`mar-mws`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use mar_sdk::types::{Results, ServiceInfo};
use mar_store::Service;

use super::{Admin, ApiError, ApiResult, Platform, command_of};

impl Platform {
    /// The API's view of a service instance.
    fn service_info(&self, s: Service) -> ServiceInfo {
        ServiceInfo {
            address: format!(
                "http://{}{}",
                self.domain,
                crate::apps::port_suffix(self.port)
            ),
            name: s.name,
            kind: s.kind,
            id: s.id,
            secret: s.secret,
            access: s.access,
            created_at: s.created_at,
        }
    }
}

/// 16 random bytes as hex (ids take 12: 24 hex digits, as the old service's ids).
fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("no random source: {e}"),
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub(super) async fn list_services(
    _: Admin,
    State(p): State<Arc<Platform>>,
) -> ApiResult<Json<Results<ServiceInfo>>> {
    let results = p
        .store
        .list_services()?
        .into_iter()
        .map(|s| p.service_info(s))
        .collect();
    Ok(Json(Results { results }))
}

/// `POST /v1/services {"kind": "mws", "name": "push"}`.
pub(super) async fn create_service(
    _: Admin,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ServiceInfo>)> {
    let kind = command_of(&body, "kind")?;
    let name = command_of(&body, "name")?;
    // Service names follow app names' rules: they show in URLs and variable values.
    mar_core::AppName::parse(&name).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailed",
            format!("invalid service name: {e}"),
        )
    })?;
    match kind.as_str() {
        "mws" => {}
        "eds" => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailed",
                "EDS data stores are not built yet in this mini-MAR; kinds: mws",
            ));
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailed",
                format!("unknown service kind {other:?}; kinds: mws"),
            ));
        }
    }
    let s = p
        .store
        .create_service(&name, &kind, &random_hex(12)?, &random_hex(16)?)?;
    p.gateways
        .add(&s.id, &s.name, &s.secret, mar_mws::Access::None);
    Ok((StatusCode::CREATED, Json(p.service_info(s))))
}

pub(super) async fn show_service(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServiceInfo>> {
    let s = p.store.service(&name)?;
    Ok(Json(p.service_info(s)))
}

pub(super) async fn destroy_service(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let s = p.store.service(&name)?;
    p.store.delete_service(&name)?;
    p.gateways.remove(&s.id);
    Ok(Json(serde_json::json!({})))
}
