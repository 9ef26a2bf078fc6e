//! `GET /v1/apps/APP/metrics`: the app's last hour in 10-second samples (requests by status
//! class, p50/p99 latency, open WebSockets, memory by instance, restarts), the interval still
//! open last; what the web console draws its charts from.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use super::{Admin, ApiResult, Platform, existing};
use crate::metrics_history::{INTERVAL, Sample, instances, unix_now};

/// The series and its interval.
#[derive(serde::Serialize)]
pub(super) struct Series {
    interval_secs: u64,
    samples: Vec<Sample>,
}

/// `GET /v1/apps/APP/metrics`.
pub(super) async fn app_metrics(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Series>> {
    let app = existing(&p, &app)?;
    let now = p.metrics.app(&app).snapshot();
    let samples = p
        .history
        .series(&app, now, instances(&p.apps, &app), unix_now());
    Ok(Json(Series {
        interval_secs: INTERVAL.as_secs(),
        samples,
    }))
}
