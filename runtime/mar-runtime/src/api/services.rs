//! `/v1/services`: service instances (MWS gateways and EDS backends): create, list, show,
//! destroy, attach and detach. A gateway's own API lives under `/v1/gateways/ID/`
//! (`mar-mws`); a backend's under `/v1/objects/…`, `/v1/users/…` with its
//! `Enginio-Backend-Id` (`mar-eds`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use http::StatusCode;
use std::collections::BTreeMap;

use mar_core::AppName;
use mar_sdk::types::{Attachment, Results, ServiceInfo};
use mar_store::Service;

use super::{Admin, ApiError, ApiResult, Platform, command_of, existing};

impl Platform {
    /// The API's view of a service instance.
    fn service_info(&self, s: Service) -> ServiceInfo {
        let api_key = api_key_of(&s);
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
            api_key,
            access: s.access,
            created_at: s.created_at,
        }
    }
}

impl Platform {
    /// The variables an attached service puts in an app's environment.
    pub(crate) fn service_vars(&self, s: &Service) -> BTreeMap<String, String> {
        let info = self.service_info(s.clone());
        let prefix = s.kind.to_ascii_uppercase();
        let id_var = if s.kind == "eds" {
            "BACKEND_ID"
        } else {
            "GATEWAY_ID"
        };
        BTreeMap::from([
            (format!("{prefix}_ADDRESS"), info.address),
            (format!("{prefix}_{id_var}"), info.id),
            (format!("{prefix}_SECRET"), info.secret),
        ])
    }

    /// The config var names `app`'s attached services own, with the service's name.
    pub(crate) fn attached_vars(&self, app: &AppName) -> ApiResult<BTreeMap<String, String>> {
        let mut owned = BTreeMap::new();
        for s in self.store.attached_to(app)? {
            for k in self.service_vars(&s).into_keys() {
                owned.insert(k, s.name.clone());
            }
        }
        Ok(owned)
    }
}

/// An EDS backend's API key, kept in its settings.
pub(crate) fn api_key_of(s: &Service) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(&s.settings)
        .ok()
        .and_then(|v| v["apiKey"].as_str().map(str::to_owned))
}

/// Random bytes as hex (ids take 12: 24 hex digits, as the old service's ids).
pub(super) fn random_hex(bytes: usize) -> Result<String, ApiError> {
    mar_http::credentials::random_hex(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("no random source: {e}"),
        )
    })
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
    let s = p.new_service(&name, &kind).await?;
    Ok((StatusCode::CREATED, Json(p.service_info(s))))
}

impl Platform {
    /// Makes a service instance: a gateway served at once, or a backend with its file open.
    pub(crate) async fn new_service(&self, name: &str, kind: &str) -> ApiResult<Service> {
        // Service names follow app names' rules: they show in URLs and variable values.
        mar_core::AppName::parse(name).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailed",
                format!("invalid service name: {e}"),
            )
        })?;
        if !matches!(kind, "mws" | "eds") {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailed",
                format!("unknown service kind {kind:?}; kinds: mws, eds"),
            ));
        }
        let mut s = self
            .store
            .create_service(name, kind, &random_hex(12)?, &random_hex(16)?)?;
        if kind == "eds" {
            let settings = serde_json::json!({ "apiKey": random_hex(16)? }).to_string();
            self.store.set_service_config(&s.id, &s.access, &settings)?;
            s.settings = settings;
            let opened = {
                let (backends, s) = (self.backends.clone(), s.clone());
                tokio::task::spawn_blocking(move || {
                    backends.add(&s.id, &s.name, &s.secret, api_key_of(&s).as_deref())
                })
                .await
            };
            if let Err(e) = opened
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                let _ = self.store.delete_service(name);
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("cannot open the backend's data file: {e}"),
                ));
            }
        } else {
            self.gateways
                .add(&s.id, &s.name, &s.secret, mar_mws::GatewayConfig::default());
        }
        Ok(s)
    }

    /// Destroys a service instance that no app is attached to; a backend's data goes too.
    pub(crate) async fn remove_service(&self, name: &str) -> ApiResult<()> {
        let s = self.store.service(name)?;
        let apps = self.store.attachments_of(name)?;
        if !apps.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "{name} is attached to {}: detach it first (mar services:detach {name} -a APP)",
                    apps.join(", ")
                ),
            ));
        }
        self.store.delete_service(name)?;
        if s.kind == "eds" {
            // Its data goes with it, as a Heroku add-on's does.
            let backends = self.backends.clone();
            let id = s.id.clone();
            let _ = tokio::task::spawn_blocking(move || backends.remove(&id)).await;
        } else {
            self.gateways.remove(&s.id);
        }
        self.relink_gateways();
        Ok(())
    }
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
    p.remove_service(&name).await?;
    Ok(Json(serde_json::json!({})))
}

/// An EDS backend and an MWS gateway, by their service names.
fn backend_and_gateway(
    p: &Platform,
    eds: &str,
    mws: &str,
) -> ApiResult<(Arc<mar_eds::Backend>, Service)> {
    let e = p.store.service(eds)?;
    let g = p.store.service(mws)?;
    if e.kind != "eds" || g.kind != "mws" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailed",
            format!(
                "link an EDS backend to an MWS gateway: {eds} is {}, {mws} is {}",
                e.kind, g.kind
            ),
        ));
    }
    let b = p.backends.get(&e.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the backend {eds} is not open (see the server's log)"),
        )
    })?;
    Ok((b, g))
}

fn eds_error(e: mar_eds::EdsError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = if status == StatusCode::BAD_REQUEST {
        "ValidationFailed"
    } else {
        "InternalError"
    };
    ApiError::new(status, reason, e.to_string())
}

/// `POST /v1/services/EDS/links {"gateway": "MWS"}`: every change in the backend goes to the
/// gateway's enginio receiver in-process, so clients tagged with the object's readers hear
/// of it with no code in between (the talk's todo flow).
pub(super) async fn link(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let mws = command_of(&body, "gateway")?;
    let (b, g) = backend_and_gateway(&p, &name, &mws)?;
    let id = g.id.clone();
    tokio::task::spawn_blocking(move || b.link(&id))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?
        .map_err(|e| match e {
            mar_eds::EdsError::Validation { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("{name} is already linked to {mws}"),
            ),
            e => eds_error(e),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"backend": name, "gateway": mws})),
    ))
}

/// `DELETE /v1/services/EDS/links/MWS`.
pub(super) async fn unlink(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((name, mws)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let (b, g) = backend_and_gateway(&p, &name, &mws)?;
    let id = g.id.clone();
    let was = tokio::task::spawn_blocking(move || b.unlink(&id))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?
        .map_err(eds_error)?;
    if !was {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{name} is not linked to {mws}"),
        ));
    }
    Ok(Json(serde_json::json!({"backend": name, "gateway": mws})))
}

/// `POST /v1/services/NAME/attachments {"app": "APP"}`: the service's variables go into the
/// app's environment as a new release (and restart), as a Heroku add-on's do.
pub(super) async fn attach(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let s = p.store.service(&name)?;
    let app = existing(&p, &command_of(&body, "app")?)?;
    p.store.attach(&name, &app)?;
    let vars = p.service_vars(&s);
    let changes = vars
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let description = format!("Attach {name} ({})", s.kind);
    if let Err(e) = p.apps.set_config_as(&app, changes, Some(description)).await {
        // No release: no attachment either.
        let _ = p.store.detach(&name, &app);
        return Err(e.into());
    }
    p.relink_gateways();
    Ok((
        StatusCode::CREATED,
        Json(Attachment {
            service: name,
            kind: s.kind,
            app: app.to_string(),
            vars: vars.into_keys().collect(),
        }),
    ))
}

/// `DELETE /v1/services/NAME/attachments/APP`: the variables leave the app's environment as
/// a new release.
pub(super) async fn detach(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((name, app)): Path<(String, String)>,
) -> ApiResult<Json<Attachment>> {
    let s = p.store.service(&name)?;
    let app = existing(&p, &app)?;
    p.store.detach(&name, &app)?;
    let vars = p.service_vars(&s);
    let changes = vars.keys().map(|k| (k.clone(), None)).collect();
    let description = format!("Detach {name} ({})", s.kind);
    if let Err(e) = p.apps.set_config_as(&app, changes, Some(description)).await {
        let _ = p.store.attach(&name, &app);
        return Err(e.into());
    }
    p.relink_gateways();
    Ok(Json(Attachment {
        service: name,
        kind: s.kind,
        app: app.to_string(),
        vars: vars.into_keys().collect(),
    }))
}

/// `GET /v1/apps/APP/attachments`: the services attached to an app and the variables each
/// owns.
pub(super) async fn app_attachments(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<Attachment>>> {
    let app = existing(&p, &app)?;
    let results = p
        .store
        .attached_to(&app)?
        .into_iter()
        .map(|s| Attachment {
            vars: p.service_vars(&s).into_keys().collect(),
            service: s.name,
            kind: s.kind,
            app: app.to_string(),
        })
        .collect();
    Ok(Json(Results { results }))
}
