//! The web console's routes on the platform's host: its page at `/` and files under
//! `/console/`, its session (`/console/session`: `POST` signs in with the admin token or the
//! console password, `GET` tells the page its CSRF token, `DELETE` signs out), and the console
//! password (`/v1/console/password`, admin only: set, cleared, or asked whether there is one).
//! The pages then use the platform API like any client (see `auth.rs` for how a session is
//! let through).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::auth::request_host;
use super::{ApiError, ApiResult, Platform};

/// How long a console session lasts after signing in.
pub(crate) const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// `GET /` and `GET /console/FILE`: the console's page and files.
pub(super) async fn page(req: Request) -> Response {
    let Some(asset) = mar_console::asset(req.uri().path()) else {
        return ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such console file")
            .into_response();
    };
    let mut r = asset.body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    mar_console::security_headers(r.headers_mut());
    r
}

/// The sign-in form's body.
#[derive(serde::Deserialize)]
pub(super) struct SignIn {
    token: String,
}

/// The sign-in's body: JSON only, so no HTML form of any site can post one (a form sends
/// only urlencoded, multipart or plain-text bodies); every refusal is the API's JSON error.
fn sign_in_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<SignIn> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "sign in with a JSON body, {\"token\": \"…\"}, sent as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"token\": \"…\"}}: {e}")))
}

/// `POST /console/session {"token"}`: signs in with the admin token.
pub(super) async fn sign_in(
    State(p): State<Arc<Platform>>,
    parts: Parts,
    body: Bytes,
) -> ApiResult<Response> {
    let body = sign_in_body(&parts.headers, &body)?;
    // A sign-in form another site posts is not one (the cookie it would set is this site's).
    if p.console
        .cross_site(&parts.headers, request_host(&parts).as_deref())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            mar_console::Refusal::CrossSite.message(),
        ));
    }
    let client = parts
        .extensions
        .get::<mar_http::Connection>()
        .map(|c| c.client.ip());
    if let Some(wait) = client.and_then(|ip| p.sign_in_limit.refused(ip, Instant::now())) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!(
                "{} failed sign-ins from this address: try again in {} minute(s)",
                mar_console::MAX_FAILURES,
                wait.as_secs().div_ceil(60)
            ),
        ));
    }
    // The field takes the admin token, or the console password when one is set.
    let given = body.token.trim_end_matches(['\r', '\n']);
    let signed_in = super::auth::same(given.trim().as_bytes(), p.token.as_bytes())
        || password_matches(&p, given).await;
    if !signed_in {
        if let Some(ip) = client {
            p.sign_in_limit.failed(ip, Instant::now());
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            if p.console_password.is_file() {
                "that is neither the admin token (`mar auth:token` prints it on the server) nor the console password"
            } else {
                "that is not the admin token: `mar auth:token` prints it on the server (or set a console password with `mar console:password`)"
            },
        ));
    }
    if let Some(ip) = client {
        p.sign_in_limit.succeeded(ip);
    }
    let (id, view) = p.console.open().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("no randomness for a session: {e}"),
        )
    })?;
    let cookie = p.console.cookie_for(&id, over_https(&parts));
    let mut r = Json(session_json(&view)).into_response();
    set_cookie(r.headers_mut(), &cookie);
    mar_console::security_headers(r.headers_mut());
    Ok(r)
}

/// Whether `given` is the console password (false when none is set): checked on a blocking
/// thread, at most two at a time.
async fn password_matches(p: &Arc<Platform>, given: &str) -> bool {
    let Ok(hash) = tokio::fs::read_to_string(&p.console_password).await else {
        return false;
    };
    let Ok(_permit) = p.password_checks.acquire().await else {
        return false;
    };
    let given = given.to_owned();
    tokio::task::spawn_blocking(move || mar_eds::password::verify(&given, hash.trim()))
        .await
        .unwrap_or(false)
}

/// Shortest console password, in bytes.
const MIN_PASSWORD: usize = 12;
/// Longest console password, in bytes (argon2 hashes all of it).
const MAX_PASSWORD: usize = 1024;

/// `GET /v1/console/password`: whether one is set.
pub(super) async fn password_state(
    _: super::Admin,
    State(p): State<Arc<Platform>>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "set": p.console_password.is_file() }))
}

/// `PUT /v1/console/password {"password"}`: sets the console's password (kept as an argon2id
/// hash, 0600); the admin token still signs in too.
pub(super) async fn set_password(
    _: super::Admin,
    State(p): State<Arc<Platform>>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    // A body that is not `{"password": "…"}` gets the API's JSON error, as everywhere.
    let password = super::command_of(&body, "password")?;
    let len = password.len();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        return Err(ApiError::bad_request(format!(
            "a console password is {MIN_PASSWORD} to {MAX_PASSWORD} bytes long, not {len}"
        )));
    }
    if password.trim() != password {
        return Err(ApiError::bad_request(
            "a console password neither starts nor ends with a space or a newline",
        ));
    }
    let path = p.console_password.clone();
    tokio::task::spawn_blocking(move || {
        let hash = mar_eds::password::hash(&password).map_err(|e| e.to_string())?;
        crate::private_files::write_private(&path, hash.as_bytes()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("cannot keep the console password: {e}"),
        )
    })?;
    Ok(Json(serde_json::json!({ "set": true })))
}

/// `DELETE /v1/console/password`: only the admin token signs in from now on. Sessions that
/// are open stay open until they end or sign out.
pub(super) async fn clear_password(
    _: super::Admin,
    State(p): State<Arc<Platform>>,
) -> ApiResult<Json<serde_json::Value>> {
    match std::fs::remove_file(&p.console_password) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("cannot remove the console password: {e}"),
            ));
        }
    }
    Ok(Json(serde_json::json!({ "set": false })))
}

/// `GET /console/session`: the page's CSRF token and when its session ends; 401 without one.
pub(super) async fn show_session(
    State(p): State<Arc<Platform>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let view = p.console.find(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "not signed in to the console",
        )
    })?;
    let mut r = Json(session_json(&view)).into_response();
    mar_console::security_headers(r.headers_mut());
    Ok(r)
}

/// `DELETE /console/session`: signs out, ending the session here (its cookie no longer opens
/// anything, even replayed). Needs the session's CSRF token like every change.
pub(super) async fn sign_out(State(p): State<Arc<Platform>>, parts: Parts) -> ApiResult<Response> {
    let host = request_host(&parts);
    p.console
        .authorize(&parts.method, &parts.headers, host.as_deref())
        .map_err(|refusal| ApiError::new(StatusCode::FORBIDDEN, "Forbidden", refusal.message()))?;
    p.console.close(&parts.headers);
    let mut r = StatusCode::NO_CONTENT.into_response();
    set_cookie(
        r.headers_mut(),
        &mar_console::Sessions::cookie_cleared(over_https(&parts)),
    );
    Ok(r)
}

fn session_json(view: &mar_console::SessionView) -> serde_json::Value {
    serde_json::json!({ "csrf": view.csrf, "expires_at": view.expires_at })
}

fn set_cookie(h: &mut HeaderMap, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(header::SET_COOKIE, v);
    }
}

/// Whether the client reached the router over TLS (the cookie is then `Secure`).
fn over_https(parts: &Parts) -> bool {
    parts
        .extensions
        .get::<mar_http::Connection>()
        .is_some_and(|c| c.scheme == mar_http::Scheme::Https)
}
