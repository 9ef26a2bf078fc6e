//! `POST /v1/apps/APP/builds`: the git hook sends the pushed tree; the build and deploy stream
//! back to the pusher.

use std::sync::Arc;

use axum::Json;
use axum::body::Body as AxumBody;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::response::Response;
use mar_build::Output;
use mar_sdk::types::BuildResult;

use crate::build_logs::{BuildOutput, BuildRecord};

use super::{Admin, ApiError, ApiResult, Platform, existing, line_stream};

/// `?commit=SHA`: the pushed commit.
#[derive(serde::Deserialize)]
pub(super) struct BuildQuery {
    commit: Option<String>,
}

/// `POST /v1/apps/APP/builds`: the body is a tar of the source. Builds and deploys, streaming
/// the output; the last line carries the result. Called by the git hook during a push.
pub(super) async fn create_build(
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
    let source = p
        .apps
        .receive_source(&app, commit.clone(), body.into_data_stream())
        .await?;
    let (out, rx) = Output::channel();
    // Recorded for the console on the way to the pusher.
    let rx = p.builds.record(&app, &commit, rx);
    // The pusher hung up (Ctrl-C): stop the build rather than deploy a commit git will not
    // record.
    let (cancel, watcher) = out.cancel_when_gone();
    let p2 = p.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let result = match p2.apps.push(&app, source, &out, &cancel).await {
            Ok(d) => BuildResult {
                ok: true,
                release: Some(d.release.version),
            },
            Err(_) => BuildResult {
                ok: false,
                release: None,
            },
        };
        out.line_surely(format!(
            "{}{}",
            mar_sdk::types::BUILD_RESULT_MARK,
            serde_json::to_string(&result).unwrap_or_default()
        ))
        .await;
        watcher.abort();
    });
    Ok(line_stream(rx))
}

/// `GET /v1/apps/APP/builds`: the app's builds, newest first.
pub(super) async fn list_builds(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<BuildRecord>>> {
    let app = existing(&p, &app)?;
    Ok(Json(p.builds.list(&app)))
}

/// `GET /v1/apps/APP/builds/ID/output`: a build's output, followed while it runs.
pub(super) async fn build_output(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    match p.builds.output(&app, &id) {
        Some(BuildOutput::Following(rx)) => Ok(line_stream(rx)),
        Some(BuildOutput::Ended(text)) => {
            let mut r = text.into_response();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        None => Err(ApiError::new(
            http::StatusCode::NOT_FOUND,
            "NotFound",
            format!("{app} has no build {id}"),
        )),
    }
}
