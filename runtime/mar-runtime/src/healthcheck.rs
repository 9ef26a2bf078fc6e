//! Startup health checks from `app.json`, in Dokku's format: before traffic moves to a new
//! release, each new web instance must answer its checks, or the deploy is aborted and the
//! pusher is told which check failed and why.
//!
//! ```json
//! { "healthchecks": { "web": [
//!   { "type": "startup", "name": "ready", "path": "/health", "content": "ok",
//!     "attempts": 5, "timeout": 5, "wait": 5, "initialDelay": 0 } ] } }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};

/// One check, with Dokku's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `startup` (run before traffic moves) or `liveness` (not run by mini-MAR yet).
    #[serde(rename = "type", default = "startup")]
    pub kind: String,
    /// Shown in the push output.
    #[serde(default)]
    pub name: Option<String>,
    /// Request path.
    #[serde(default = "root")]
    pub path: String,
    /// Text the response body must contain.
    #[serde(default)]
    pub content: Option<String>,
    /// Tries before giving up.
    #[serde(default = "five")]
    pub attempts: u32,
    /// Seconds to wait for each answer.
    #[serde(default = "five")]
    pub timeout: u32,
    /// Seconds between tries.
    #[serde(default = "five")]
    pub wait: u32,
    /// Seconds before the first try.
    #[serde(default)]
    pub initial_delay: u32,
}

fn startup() -> String {
    "startup".to_owned()
}
fn root() -> String {
    "/".to_owned()
}
fn five() -> u32 {
    5
}

#[derive(Deserialize)]
struct AppJson {
    #[serde(default)]
    healthchecks: Option<Healthchecks>,
}

#[derive(Deserialize)]
struct Healthchecks {
    #[serde(default)]
    web: Vec<Check>,
}

/// Reads the `web` health checks from an `app.json` text; a malformed file is an error the
/// pusher sees.
pub fn parse_app_json(text: &str) -> Result<Vec<Check>, String> {
    let parsed: AppJson =
        serde_json::from_str(text).map_err(|e| format!("app.json is not valid: {e}"))?;
    let checks = parsed.healthchecks.map(|h| h.web).unwrap_or_default();
    for (i, c) in checks.iter().enumerate() {
        if !c.path.starts_with('/') {
            return Err(format!(
                "app.json: healthchecks.web[{i}].path must start with '/', not {:?}",
                c.path
            ));
        }
        if c.attempts == 0 || c.timeout == 0 {
            return Err(format!(
                "app.json: healthchecks.web[{i}]: attempts and timeout must be at least 1"
            ));
        }
    }
    Ok(checks)
}

/// The checks stored with a release (`null` or a JSON list).
pub fn from_release(json: &str) -> Vec<Check> {
    serde_json::from_str::<Option<Vec<Check>>>(json)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Runs the startup checks against one instance; `say` gets a line per attempt. Returns why it
/// failed.
pub async fn run(
    checks: &[Check],
    addr: SocketAddr,
    host: &str,
    dyno: &str,
    say: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    for c in checks.iter().filter(|c| c.kind == "startup") {
        let label = c.name.clone().unwrap_or_else(|| c.path.clone());
        tokio::time::sleep(Duration::from_secs(c.initial_delay.into())).await;
        let mut last = String::new();
        let mut passed = false;
        for attempt in 1..=c.attempts {
            match probe(addr, host, &c.path, Duration::from_secs(c.timeout.into())).await {
                Ok((status, body)) if (200..300).contains(&status) => match &c.content {
                    Some(want) if !body.contains(want.as_str()) => {
                        last = format!("answered {status} without the expected content {want:?}")
                    }
                    _ => {
                        say(format!("{dyno}: healthcheck {label:?} passed ({status})"));
                        passed = true;
                        break;
                    }
                },
                Ok((status, _)) => last = format!("answered {status}"),
                Err(e) => last = e,
            }
            say(format!(
                "{dyno}: healthcheck {label:?} attempt {attempt}/{}: {last}",
                c.attempts
            ));
            if attempt < c.attempts {
                tokio::time::sleep(Duration::from_secs(c.wait.into())).await;
            }
        }
        if !passed {
            return Err(format!(
                "{dyno} failed healthcheck {label:?} after {} attempts: {last}",
                c.attempts
            ));
        }
    }
    Ok(())
}

async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .header("x-forwarded-proto", "http")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // A check reads a small answer; an app that streams forever cannot fill memory.
        let body = http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dokku_format_with_defaults() {
        let checks = parse_app_json(r#"{"name":"x","healthchecks":{"web":[{"type":"startup","name":"ready","path":"/health","content":"ok","attempts":2}]}}"#).unwrap();
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].attempts, 2);
        assert_eq!(checks[0].wait, 5);
        assert_eq!(checks[0].initial_delay, 0);
        assert!(parse_app_json("{}").unwrap().is_empty());
        assert!(
            parse_app_json("{not json")
                .unwrap_err()
                .contains("app.json is not valid")
        );
        assert!(
            parse_app_json(r#"{"healthchecks":{"web":[{"path":"health"}]}}"#)
                .unwrap_err()
                .contains("must start with '/'")
        );
        let round = serde_json::to_string(&checks).unwrap();
        assert_eq!(from_release(&round), checks);
        assert!(from_release("null").is_empty());
    }
}
