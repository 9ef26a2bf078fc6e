//! `/v1/apps/APP/ps`, `formation`, `restart`, `run` and the old API's `exec`: the app's
//! instances, their counts, rolling restarts and one-off commands.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use mar_core::AppName;
use mar_sdk::types::{FormationEntry, ProcessInfo, Results, RunResult, WasmStats};
use mar_supervisor::State as PState;
use tokio_util::sync::CancellationToken;

use super::{Admin, ApiError, ApiResult, Platform, command_of, existing, json_body, line_stream};

pub(super) async fn list_processes(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<ProcessInfo>>> {
    let app = existing(&p, &app)?;
    if let Some((w, in_flight, release)) = p.apps.wasm_serving(&app) {
        let s = w.stats();
        return Ok(Json(Results {
            results: vec![ProcessInfo {
                dyno: "wasm".into(),
                process_type: "wasm".into(),
                state: "up".into(),
                command: w.interface().describe().into(),
                release,
                port: None,
                pid: None,
                uptime_secs: None,
                restarts: 0,
                memory_bytes: None,
                wasm: Some(WasmStats {
                    in_flight,
                    running: s.running,
                    waiting: s.waiting,
                    concurrency: s.concurrency,
                    pool_in_use: s.pool_in_use,
                    pool_size: s.pool_size,
                    requests: s.requests,
                    failures: s.failures,
                    instantiations: s.instantiations,
                    reused: s.reused,
                    mean_instantiation_us: s.mean_instantiation_us,
                    last_instantiation_us: s.last_instantiation_us,
                }),
            }],
        }));
    }
    let results = p
        .apps
        .instances(&app)
        .into_iter()
        .map(|i| {
            let spec = i.spec();
            let (pid, port, uptime) = match i.state() {
                PState::Up { pid, port, since } => {
                    (Some(pid), port, since.elapsed().ok().map(|d| d.as_secs()))
                }
                _ => (None, None, None),
            };
            ProcessInfo {
                dyno: spec.dyno(),
                process_type: spec.process_type.clone(),
                state: i.state().name().to_owned(),
                command: spec.command.clone(),
                release: spec.release,
                port,
                pid,
                uptime_secs: uptime,
                restarts: i.restarts(),
                memory_bytes: i.memory(),
                wasm: None,
            }
        })
        .collect();
    Ok(Json(Results { results }))
}

pub(super) async fn restart_processes(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    let body = json_body(&body)?;
    let target = body
        .get("target")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty());
    let restarted = p.apps.restart(&app, target).await?;
    Ok(Json(serde_json::json!({ "restarted": restarted })))
}

fn formation_results(p: &Platform, app: &AppName) -> ApiResult<Results<FormationEntry>> {
    let formation = p.store.formation(app)?;
    let types = p
        .store
        .current_release(app)?
        .map(|r| r.process_types)
        .unwrap_or_default();
    let mut names: Vec<&String> = formation
        .keys()
        .chain(types.keys())
        .filter(|t| *t != "release")
        .collect();
    names.sort();
    names.dedup();
    let results = names
        .into_iter()
        .map(|t| FormationEntry {
            process_type: t.clone(),
            quantity: formation.get(t).copied().unwrap_or(0),
            command: types.get(t).cloned(),
        })
        .collect();
    Ok(Results { results })
}

pub(super) async fn get_formation(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
) -> ApiResult<Json<Results<FormationEntry>>> {
    let app = existing(&p, &app)?;
    Ok(Json(formation_results(&p, &app)?))
}

/// Accepts `{"web": 3}`, the old MAR API's `{"web": "3"}`, and Heroku's
/// `{"updates": [{"type": "web", "quantity": 3}]}`.
pub(super) async fn patch_formation(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Results<FormationEntry>>> {
    let app = existing(&p, &app)?;
    let body = json_body(&body)?;
    let quantity = |t: &str, v: &serde_json::Value| -> ApiResult<u32> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("quantity of {t} must be a whole number, not {v}"))
            })
    };
    let mut changes = BTreeMap::new();
    if let Some(updates) = body.get("updates").and_then(|u| u.as_array()) {
        for u in updates {
            let t = u
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or_else(|| ApiError::bad_request("each update needs a type"))?;
            let q = u
                .get("quantity")
                .ok_or_else(|| ApiError::bad_request("each update needs a quantity"))?;
            changes.insert(t.to_owned(), quantity(t, q)?);
        }
    } else {
        for (t, v) in &body {
            changes.insert(t.clone(), quantity(t, v)?);
        }
    }
    if changes.is_empty() {
        return Err(ApiError::bad_request("nothing to scale: send {\"web\": 2}"));
    }
    p.apps.scale(&app, changes).await?;
    Ok(Json(formation_results(&p, &app)?))
}

/// `POST /v1/apps/APP/run`: a one-off process; output streams back, the last line carries the
/// exit status. Hanging up kills the process.
pub(super) async fn run_command(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    let command = command_of(&body, "command")?;
    let (out, rx) = mar_build::Output::channel();
    // Hanging up kills the process.
    let (cancel, watcher) = out.cancel_when_gone();
    tokio::spawn(async move {
        let result = match p
            .apps
            .run_command(&app, &command, out.clone(), cancel)
            .await
        {
            Ok(code) => RunResult {
                exit_code: Some(code),
                error: None,
            },
            Err(e) => RunResult {
                exit_code: None,
                error: Some(e.to_string()),
            },
        };
        watcher.abort();
        out.line_surely(format!(
            "{}{}",
            mar_sdk::types::BUILD_RESULT_MARK,
            serde_json::to_string(&result).unwrap_or_default()
        ))
        .await;
    });
    Ok(line_stream(rx))
}

/// The old MAR API's `POST /apps/<id>/exec {"cmd"}` → `{"stdout","stderr"}`. Output of both
/// streams arrives interleaved in `stdout`, as a terminal would show it.
pub(super) async fn exec_command(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let app = existing(&p, &app)?;
    let command = command_of(&body, "cmd")?;
    let (out, mut rx) = mar_build::Output::channel();
    let collect = tokio::spawn(async move {
        // The answer holds at most this much of the command's output.
        const KEPT: usize = 1 << 20;
        let mut kept = String::new();
        while let Some(l) = rx.recv().await {
            if kept.len() < KEPT {
                kept.push_str(&l);
                kept.push('\n');
            }
        }
        kept
    });
    let code = p
        .apps
        .run_command(&app, &command, out, CancellationToken::new())
        .await?;
    let stdout = collect.await.unwrap_or_default();
    Ok(Json(
        serde_json::json!({ "stdout": stdout, "stderr": "", "exitCode": code }),
    ))
}
