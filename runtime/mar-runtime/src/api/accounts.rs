//! Accounts and the account API of the Enginio dashboard era (qtc-api.md §4.4), which
//! dashboard-era tooling and Qt's Enginio test setup use to make backends: an account signs in
//! with `POST /v1/account/auth/oauth2/token` (form `grant_type=password&username=EMAIL&
//! password=…`) and creates apps with `POST /v1/account/apps {"name"}`; each app is two EDS
//! backends, its `development` and `production` environments, with their master and API keys.
//!
//! Accounts are made by the platform's admin (`mar accounts:create EMAIL`, the password read
//! from standard input), their passwords kept as argon2id hashes. Account tokens live in the
//! server's memory for 8 hours: a restart signs everyone out, which is all an account token
//! is good for (its backends' keys do not change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;
use serde_json::{Value, json};

use super::{Admin, ApiError, ApiResult, Platform, command_of};

/// How long an account token lives.
const TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// Account tokens: token → (email, expiry).
#[derive(Default)]
pub(crate) struct AccountTokens(Mutex<HashMap<String, (String, Instant)>>);

impl AccountTokens {
    fn issue(&self, email: &str) -> ApiResult<String> {
        let token = super::services::random_hex(32)?;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        map.insert(token.clone(), (email.to_owned(), now + TOKEN_TTL));
        Ok(token)
    }

    fn email(&self, token: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(email, _)| email.clone())
    }

    fn forget(&self, email: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (e, _)| e != email);
    }
}

/// The signed-in account of an account API call.
pub(super) struct AccountCaller(String);

impl FromRequestParts<Arc<Platform>> for AccountCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, p: &Arc<Platform>) -> Result<Self, ApiError> {
        mar_http::credentials::bearer_of(&parts.headers)
            .and_then(|t| p.account_tokens.email(t))
            .map(AccountCaller)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "sign in first: POST /v1/account/auth/oauth2/token",
                )
            })
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        e.to_string(),
    )
}

fn valid_email(email: &str) -> bool {
    email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `POST /v1/accounts {"email","password"}` (the admin): a new account.
pub(super) async fn create_account(
    _: Admin,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let email = command_of(&body, "email")?.to_ascii_lowercase();
    let password = command_of(&body, "password")?;
    if !valid_email(&email) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailed",
            format!("{email:?} is not an email address"),
        ));
    }
    if password.len() < 8 || password.len() > 1024 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailed",
            "the password must have 8 to 1024 bytes",
        ));
    }
    let hash = tokio::task::spawn_blocking(move || mar_eds::password::hash(&password))
        .await
        .map_err(blocking_failed)?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
    p.store.create_account(&email, &hash)?;
    Ok((StatusCode::CREATED, Json(json!({ "email": email }))))
}

/// `GET /v1/accounts` (the admin).
pub(super) async fn list_accounts(
    _: Admin,
    State(p): State<Arc<Platform>>,
) -> ApiResult<Json<Value>> {
    let all: Vec<Value> = p
        .store
        .accounts()?
        .into_iter()
        .map(|a| json!({"email": a.email, "created_at": a.created_at}))
        .collect();
    Ok(Json(json!({ "results": all })))
}

/// `DELETE /v1/accounts/EMAIL` (the admin): the account and its apps' backends.
pub(super) async fn destroy_account(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(email): Path<String>,
) -> ApiResult<Json<Value>> {
    for app in p.store.account_apps(&email)? {
        remove_app(&p, &app).await?;
    }
    p.store.delete_account(&email)?;
    p.account_tokens.forget(&email);
    Ok(Json(json!({})))
}

/// `POST /v1/account/auth/oauth2/token`: an account's token (RFC 6749's errors).
pub(super) async fn account_token(
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                mar_http::percent_decode(k, true),
                mar_http::percent_decode(v, true),
            )
        })
        .collect();
    let oauth = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("password") {
        return oauth("unsupported_grant_type", "grant_type must be password");
    }
    let email = form
        .get("username")
        .cloned()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let password = form.get("password").cloned().unwrap_or_default();
    let hash = match p.store.account_hash(&email) {
        Ok(h) => h,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => mar_eds::password::verify(&password, &h),
        None => {
            let _ = mar_eds::password::verify(&password, mar_eds::password::decoy());
            false
        }
    })
    .await
    .unwrap_or(false);
    if !ok {
        return oauth("invalid_grant", "the email or password is wrong");
    }
    match p.account_tokens.issue(&email) {
        Ok(token) => Json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": TOKEN_TTL.as_secs(),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// An account app's full view: its environments with their keys.
fn app_view(p: &Platform, app: &mar_store::AccountApp) -> ApiResult<Value> {
    let env = |service: &str, name: &str| -> ApiResult<Value> {
        let s = p.store.service(service)?;
        Ok(json!({
            "id": s.id,
            "name": name,
            "masterKeys": [{"key": s.secret}],
            "apiKeys": super::services::api_key_of(&s).map(|k| vec![json!({"key": k})]).unwrap_or_default(),
        }))
    };
    Ok(json!({
        "id": app.id,
        "name": app.name,
        "environments": [env(&app.development, "development")?, env(&app.production, "production")?],
    }))
}

/// `POST /v1/account/apps {"name"}`: an app with two backends, `NAME-dev` and `NAME-prod`
/// among the server's services.
pub(super) async fn create_app(
    AccountCaller(email): AccountCaller,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = command_of(&body, "name")?;
    let (dev, prod) = (format!("{name}-dev"), format!("{name}-prod"));
    p.new_service(&dev, "eds").await?;
    if let Err(e) = p.new_service(&prod, "eds").await {
        let _ = p.remove_service(&dev).await;
        return Err(e);
    }
    let app = mar_store::AccountApp {
        id: mar_eds::ids::new_id(),
        name,
        account: email,
        development: dev.clone(),
        production: prod.clone(),
    };
    if let Err(e) = p.store.create_account_app(&app) {
        let _ = p.remove_service(&dev).await;
        let _ = p.remove_service(&prod).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(app_view(&p, &app)?)))
}

/// `GET /v1/account/apps`.
pub(super) async fn list_apps(
    AccountCaller(email): AccountCaller,
    State(p): State<Arc<Platform>>,
) -> ApiResult<Json<Value>> {
    let all: Vec<Value> = p
        .store
        .account_apps(&email)?
        .into_iter()
        .map(|a| json!({"id": a.id, "name": a.name}))
        .collect();
    Ok(Json(json!({ "results": all })))
}

/// `GET /v1/account/apps/ID`.
pub(super) async fn show_app(
    AccountCaller(email): AccountCaller,
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = p.store.account_app(&email, &id)?;
    Ok(Json(app_view(&p, &app)?))
}

/// `DELETE /v1/account/apps/ID`: the app and its backends' data.
pub(super) async fn destroy_app(
    AccountCaller(email): AccountCaller,
    State(p): State<Arc<Platform>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = p.store.account_app(&email, &id)?;
    remove_app(&p, &app).await?;
    Ok(Json(json!({})))
}

async fn remove_app(p: &Platform, app: &mar_store::AccountApp) -> ApiResult<()> {
    for s in [&app.development, &app.production] {
        match p.remove_service(s).await {
            Ok(()) => {}
            // Destroyed by the admin already.
            Err(e) if e.status() == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    p.store.delete_account_app(&app.id)?;
    Ok(())
}
