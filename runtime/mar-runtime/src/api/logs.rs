//! `/v1/apps/APP/logs` and `/v1/apps/APP/logs/stream`: an app's recent log lines, filtered
//! by process and source, and the live tail: lines of text (`mar logs -t`, curl), or
//! Server-Sent Events for a client that accepts `text/event-stream` (the console's
//! `EventSource`), one event per line.

use std::sync::Arc;

use axum::Json;
use axum::body::Body as AxumBody;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use mar_sdk::types::{LogEntry, Results};

use super::{Admin, ApiError, ApiResult, Platform, existing};

#[derive(serde::Deserialize)]
pub(super) struct LogQuery {
    limit: Option<String>,
    offset: Option<String>,
    lines: Option<String>,
    ps: Option<String>,
    source: Option<String>,
}

impl LogQuery {
    /// The `ps` and `source` filters as a predicate; `ps=web` matches every web instance.
    fn filter(&self) -> ApiResult<impl Fn(&mar_logs::LogLine) -> bool + Send + Sync + 'static> {
        let source = match self.source.as_deref() {
            None | Some("") => None,
            Some(s @ ("app" | "mar")) => Some(format!("{s}[")),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "source must be app or mar, not {other:?}"
                )));
            }
        };
        let ps = self.ps.clone().filter(|p| !p.is_empty());
        Ok(move |l: &mar_logs::LogLine| {
            let inner = l
                .source
                .split_once('[')
                .map(|(_, r)| r.trim_end_matches(']'))
                .unwrap_or("");
            source
                .as_ref()
                .is_none_or(|s| l.source.starts_with(s.as_str()))
                && ps.as_ref().is_none_or(|p| {
                    inner == p || (!p.contains('.') && inner.split('.').next() == Some(p.as_str()))
                })
        })
    }
}

fn number(name: &str, v: Option<&String>, default: usize, max: usize) -> ApiResult<usize> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be a whole number from 0 to {max}, not {s:?}"
                ))
            }),
    }
}

pub(super) async fn get_logs(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Results<LogEntry>>> {
    let app = existing(&p, &app)?;
    let limit = number("limit", q.limit.as_ref(), 100, 100_000)?;
    let offset = number("offset", q.offset.as_ref(), 0, usize::MAX)?;
    let keep = q.filter()?;
    let lines = p
        .logs
        .recent_where(&app, limit, offset, keep)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
    let results = lines
        .into_iter()
        .map(|l| LogEntry {
            log: format!("{}: {}", l.source, l.text),
            time: l.time,
        })
        .collect();
    Ok(Json(Results { results }))
}

pub(super) async fn stream_logs(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
    headers: http::HeaderMap,
) -> ApiResult<Response> {
    let events = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    let app = existing(&p, &app)?;
    let n = number("lines", q.lines.as_ref(), 100, 100_000)?;
    let live = p.logs.subscribe(&app).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })?;
    let keep = Arc::new(q.filter()?);
    let k2 = keep.clone();
    let backlog = p
        .logs
        .recent_where(&app, n, 0, move |l| k2(l))
        .unwrap_or_default();
    let head = futures_util::stream::iter(
        backlog
            .into_iter()
            .map(|l| Ok::<_, std::io::Error>(Bytes::from(l.render() + "\n"))),
    );
    let stopping = p.shutdown.clone();
    let tail = futures_util::stream::unfold((live, Some(keep)), move |(mut rx, keep)| {
        let stopping = stopping.clone();
        async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    // The stream ends with the server, saying so, rather than holding the
                    // shutdown up until its grace runs out.
                    () = stopping.cancelled() => {
                        // Said once: the next call finds no filter and ends the stream.
                        keep.as_ref()?;
                        return Some((
                            Ok(Bytes::from_static(b"-----> mar serve is shutting down: the log stream ends here\n")),
                            (rx, None),
                        ));
                    }
                };
                let keep = keep.as_ref()?;
                let text = match received {
                    Ok(line) if !keep(&line) => continue,
                    Ok(line) => line.render() + "\n",
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        format!("... {n} lines skipped (reader too slow) ...\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(Bytes::from(text)), (rx, Some(keep.clone()))));
            }
        }
    });
    let lines = head.chain(tail);
    let resp = if events {
        // Each line an event; the end of the stream at shutdown an `end` event, so the page
        // does not take it for a broken one.
        let framed = lines.map(|chunk| chunk.map(|b| Bytes::from(event(&b))));
        // Comes first: EventSource opens on the headers, and a proxy flushes on this.
        let open = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b": mini-MAR log stream\n\n"))
        });
        let mut resp = AxumBody::from_stream(open.chain(framed)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    } else {
        let mut resp = AxumBody::from_stream(lines).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    Ok(resp)
}

/// A log line as one Server-Sent Event. SSE ends a field at `\r` as well as `\n`, and a log line
/// may hold a lone `\r` (an app's progress bar): each piece is a `data:` field of its own, which
/// the client joins with `\n`, so nothing an app prints can start a field (`event: end`) or an
/// event of its own. The platform's line that the stream ends is an `end` event.
fn event(chunk: &[u8]) -> String {
    let text = String::from_utf8_lossy(chunk);
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let mut out = String::with_capacity(line.len() + 16);
    if line.starts_with("-----> mar serve is shutting down") {
        out.push_str("event: end\n");
    }
    for piece in line.split(['\r', '\n']) {
        out.push_str("data: ");
        out.push_str(piece);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::event;

    #[test]
    fn an_app_cannot_start_a_field_or_an_event_of_its_own() {
        assert_eq!(event(b"plain line\n"), "data: plain line\n\n");
        // A lone CR would end the data field and start an `event:` one.
        assert_eq!(
            event(b"innocent\revent: end\n"),
            "data: innocent\ndata: event: end\n\n"
        );
        assert_eq!(event(b"a\r\rb"), "data: a\ndata: \ndata: b\n\n");
        assert!(
            event(b"-----> mar serve is shutting down: the log stream ends here\n")
                .starts_with("event: end\ndata: ")
        );
    }
}
