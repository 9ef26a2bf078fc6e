//! `mar-sdk`: a typed client for the mini-MAR platform API, used by the `mar` CLI, the git
//! hook and the tests.

pub mod services;
pub mod terminal;
mod transport;
pub mod types;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

pub use transport::{Io, Stream};
pub use types::*;

use transport::{Connector, Trust};

/// A request body: a whole buffer or a stream.
pub type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The server answered with an error: its message, which says what to do about a
    /// refusal; a server's own failure (5xx) also names its status.
    #[error("{}", api_text(message, *status))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's reason (`NotFound`, `Unauthorized`...).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached: one plain sentence, the nested client errors left in
    /// `source` for whoever wants them.
    #[error("{}", unreachable(url, cause))]
    Connect {
        /// The API URL.
        url: String,
        /// The cause (not the error's `source`, so that a report of the error is the one
        /// sentence above rather than every layer of the HTTP client).
        cause: hyper_util::client::legacy::Error,
    },
    /// The response body broke off.
    #[error("reading response: {0}")]
    Body(#[from] hyper::Error),
    /// The response was not the JSON expected.
    #[error("unexpected response: {0}")]
    Decode(#[from] serde_json::Error),
    /// The URL is not valid.
    #[error("invalid API URL {0:?}")]
    Url(String),
    /// A terminal session (`mar run` at a terminal) could not be opened or broke off.
    #[error("terminal session: {0}")]
    Terminal(String),
    /// The certificates HTTPS is to trust could not be read.
    #[error("{0}")]
    Tls(String),
}

/// A server's answer as a user reads it: a refusal is its reason alone, a failure of the
/// server's also says so by its status.
fn api_text(message: &str, status: u16) -> String {
    if status >= 500 {
        format!("{message} (HTTP {status})")
    } else {
        message.to_owned()
    }
}

/// What a user is told when the server cannot be reached: that it is not running when nothing
/// listens there, how to trust its certificate when that was refused, else the innermost
/// cause alone.
fn unreachable(url: &str, source: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = source;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("mar serve is not running at {url}; start it with `mar serve`")
        }
        Some(io) => format!(
            "cannot reach mar serve at {url}: {}",
            transport::describe_io(io)
        ),
        None => format!("cannot reach mar serve at {url}: {cause}"),
    }
}

/// A platform API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: HyperClient<Connector, RequestBody>,
    trust: Trust,
}

/// A streamed text response, read line by line.
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    /// The next line without its newline, or `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<String>, SdkError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                return Ok(Some(line));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Some(data) = frame?.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                None => self.done = true,
            }
        }
    }
}

/// Which log lines to show.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this process (`web.1`) or type (`web`).
    pub ps: Option<String>,
    /// Only `app` (the app's output) or `mar` (the platform's lines).
    pub source: Option<String>,
}

impl LogFilter {
    fn query(&self) -> String {
        let mut q = String::new();
        if let Some(ps) = &self.ps {
            q.push_str(&format!("&ps={}", enc(ps)));
        }
        if let Some(src) = &self.source {
            q.push_str(&format!("&source={}", enc(src)));
        }
        q
    }
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client for the API at `base` (`http://127.0.0.1:8080`, or `https://…`, trusting the
    /// system's roots and `MAR_CA_CERT`'s) using `token`; an error when `MAR_CA_CERT` names a
    /// file that cannot be read.
    pub fn new(base: &str, token: &str) -> Result<Self, SdkError> {
        Ok(Self::with_trust(base, token, Trust::system()?))
    }

    /// As [`Client::new`], also trusting the root certificates in the PEM files `ca_files`
    /// (a local server's own authority).
    pub fn with_ca_files(
        base: &str,
        token: &str,
        ca_files: &[std::path::PathBuf],
    ) -> Result<Self, SdkError> {
        Ok(Self::with_trust(base, token, Trust::with_files(ca_files)?))
    }

    fn with_trust(base: &str, token: &str, trust: Trust) -> Self {
        let http = HyperClient::builder(TokioExecutor::new()).build(trust.connector());
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            trust,
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the system's trusted roots alone (what curl and git use unless told otherwise)
    /// accept the server's certificate: an answer to `GET /healthz` over them. True for an
    /// `http://` server.
    pub async fn system_roots_suffice(&self) -> Result<bool, SdkError> {
        if !self.base.starts_with("https://") {
            return Ok(true);
        }
        let plain = Self::with_trust(&self.base, &self.token, Trust::system_bundle()?);
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        // Only a connection that could not be made says no: any answer came through TLS.
        Ok(!matches!(
            plain
                .send(Method::GET, "/healthz", body, "text/plain")
                .await,
            Err(SdkError::Connect { .. })
        ))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        ctype: &str,
    ) -> Result<hyper::Response<Incoming>, SdkError> {
        let url = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, ctype)
            .body(body)
            .map_err(|_| SdkError::Url(url.clone()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|cause| SdkError::Connect {
                url: self.base.clone(),
                cause,
            })?;
        if resp.status().is_client_error() || resp.status().is_server_error() {
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => SdkError::Api {
                    status: status.as_u16(),
                    reason: e.error.reason,
                    message: e.error.message,
                },
                Err(_) => SdkError::Api {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or("Error").to_owned(),
                    message: String::from_utf8_lossy(&bytes).trim().to_owned(),
                },
            });
        }
        Ok(resp)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, SdkError> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v)?),
            None => Bytes::new(),
        };
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        let resp = self.send(method, path, body, "application/json").await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(serde_json::from_value(serde_json::Value::Null)?);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppInfo>, SdkError> {
        Ok(self
            .json::<Results<AppInfo>>(Method::GET, "/v1/apps", None)
            .await?
            .results)
    }

    /// `POST /v1/apps`.
    pub async fn create_app(&self, name: &str) -> Result<AppInfo, SdkError> {
        self.json(
            Method::POST,
            "/v1/apps",
            Some(serde_json::json!({ "name": name })),
        )
        .await
    }

    /// `GET /v1/apps/APP`.
    pub async fn app(&self, name: &str) -> Result<AppInfo, SdkError> {
        self.json(Method::GET, &format!("/v1/apps/{}", enc(name)), None)
            .await
    }

    /// `DELETE /v1/apps/APP`.
    pub async fn destroy_app(&self, name: &str) -> Result<(), SdkError> {
        self.json::<serde_json::Value>(Method::DELETE, &format!("/v1/apps/{}", enc(name)), None)
            .await?;
        Ok(())
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<types::ServiceInfo>, SdkError> {
        let r: Results<types::ServiceInfo> = self.json(Method::GET, "/v1/services", None).await?;
        Ok(r.results)
    }

    /// `POST /v1/services`: a new service instance of `kind` (`mws`).
    pub async fn create_service(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<types::ServiceInfo, SdkError> {
        self.json(
            Method::POST,
            "/v1/services",
            Some(serde_json::json!({ "kind": kind, "name": name })),
        )
        .await
    }

    /// `GET /v1/services/NAME`.
    pub async fn service(&self, name: &str) -> Result<types::ServiceInfo, SdkError> {
        self.json(Method::GET, &format!("/v1/services/{}", enc(name)), None)
            .await
    }

    /// `POST /v1/services/NAME/attachments`: attaches a service to an app (a new release).
    pub async fn attach_service(
        &self,
        name: &str,
        app: &str,
    ) -> Result<types::Attachment, SdkError> {
        self.json(
            Method::POST,
            &format!("/v1/services/{}/attachments", enc(name)),
            Some(serde_json::json!({ "app": app })),
        )
        .await
    }

    /// `POST /v1/services/EDS/links {"gateway": MWS}`: the backend's changes go to the
    /// gateway's enginio receiver, in-process.
    pub async fn link_services(&self, eds: &str, mws: &str) -> Result<serde_json::Value, SdkError> {
        self.json(
            Method::POST,
            &format!("/v1/services/{}/links", enc(eds)),
            Some(serde_json::json!({ "gateway": mws })),
        )
        .await
    }

    /// `DELETE /v1/services/EDS/links/MWS`.
    pub async fn unlink_services(
        &self,
        eds: &str,
        mws: &str,
    ) -> Result<serde_json::Value, SdkError> {
        self.json(
            Method::DELETE,
            &format!("/v1/services/{}/links/{}", enc(eds), enc(mws)),
            None,
        )
        .await
    }

    /// `GET /v1/accounts`: `{"results":[{"email","created_at"}]}`.
    pub async fn accounts(&self) -> Result<serde_json::Value, SdkError> {
        self.json(Method::GET, "/v1/accounts", None).await
    }

    /// `POST /v1/accounts {"email","password"}`.
    pub async fn create_account(
        &self,
        email: &str,
        password: &str,
    ) -> Result<serde_json::Value, SdkError> {
        self.json(
            Method::POST,
            "/v1/accounts",
            Some(serde_json::json!({ "email": email, "password": password })),
        )
        .await
    }

    /// `PUT /v1/console/password`: the web console's password (the admin token signs in too).
    pub async fn set_console_password(&self, password: &str) -> Result<(), SdkError> {
        self.json::<serde_json::Value>(
            Method::PUT,
            "/v1/console/password",
            Some(serde_json::json!({ "password": password })),
        )
        .await
        .map(drop)
    }

    /// `DELETE /v1/console/password`: only the admin token signs in to the console.
    pub async fn clear_console_password(&self) -> Result<(), SdkError> {
        self.json::<serde_json::Value>(Method::DELETE, "/v1/console/password", None)
            .await
            .map(drop)
    }

    /// `DELETE /v1/accounts/EMAIL`.
    pub async fn destroy_account(&self, email: &str) -> Result<serde_json::Value, SdkError> {
        self.json(
            Method::DELETE,
            &format!("/v1/accounts/{}", enc(email)),
            None,
        )
        .await
    }

    /// `DELETE /v1/services/NAME/attachments/APP` (a new release).
    pub async fn detach_service(
        &self,
        name: &str,
        app: &str,
    ) -> Result<types::Attachment, SdkError> {
        self.json(
            Method::DELETE,
            &format!("/v1/services/{}/attachments/{}", enc(name), enc(app)),
            None,
        )
        .await
    }

    /// `GET /v1/apps/APP/attachments`.
    pub async fn attachments(&self, app: &str) -> Result<Vec<types::Attachment>, SdkError> {
        let r: Results<types::Attachment> = self
            .json(
                Method::GET,
                &format!("/v1/apps/{}/attachments", enc(app)),
                None,
            )
            .await?;
        Ok(r.results)
    }

    /// `DELETE /v1/services/NAME`.
    pub async fn destroy_service(&self, name: &str) -> Result<(), SdkError> {
        self.json::<serde_json::Value>(
            Method::DELETE,
            &format!("/v1/services/{}", enc(name)),
            None,
        )
        .await?;
        Ok(())
    }

    /// `GET /v1/apps/APP/config`.
    pub async fn config(&self, app: &str) -> Result<BTreeMap<String, String>, SdkError> {
        self.json(Method::GET, &format!("/v1/apps/{}/config", enc(app)), None)
            .await
    }

    /// `PATCH /v1/apps/APP/config`: sets the given vars, unsets those mapped to `None`, makes a
    /// release and restarts the app. Returns the new config.
    pub async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, SdkError> {
        self.json(
            Method::PATCH,
            &format!("/v1/apps/{}/config", enc(app)),
            Some(serde_json::to_value(changes)?),
        )
        .await
    }

    /// `GET /v1/apps/APP/releases`, newest first.
    pub async fn releases(&self, app: &str) -> Result<Vec<ReleaseInfo>, SdkError> {
        Ok(self
            .json::<Results<ReleaseInfo>>(
                Method::GET,
                &format!("/v1/apps/{}/releases", enc(app)),
                None,
            )
            .await?
            .results)
    }

    /// `GET /v1/apps/APP/ps`.
    pub async fn processes(&self, app: &str) -> Result<Vec<ProcessInfo>, SdkError> {
        Ok(self
            .json::<Results<ProcessInfo>>(Method::GET, &format!("/v1/apps/{}/ps", enc(app)), None)
            .await?
            .results)
    }

    /// `GET /v1/apps/APP/logs?limit=&offset=`, oldest first.
    pub async fn logs(
        &self,
        app: &str,
        limit: usize,
        offset: usize,
        filter: &LogFilter,
    ) -> Result<Vec<LogEntry>, SdkError> {
        let path = format!(
            "/v1/apps/{}/logs?limit={limit}&offset={offset}{}",
            enc(app),
            filter.query()
        );
        Ok(self
            .json::<Results<LogEntry>>(Method::GET, &path, None)
            .await?
            .results)
    }

    /// `GET /v1/apps/APP/logs/stream?lines=N`: the last N lines, then new ones as they come.
    pub async fn follow_logs(
        &self,
        app: &str,
        lines: usize,
        filter: &LogFilter,
    ) -> Result<Lines, SdkError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        let path = format!(
            "/v1/apps/{}/logs/stream?lines={lines}{}",
            enc(app),
            filter.query()
        );
        let resp = self
            .send(Method::GET, &path, body, "application/json")
            .await?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        })
    }

    /// `GET /v1/apps/APP/domains`: the app's custom domains.
    pub async fn domains(&self, app: &str) -> Result<Vec<String>, SdkError> {
        let r: Results<serde_json::Value> = self
            .json(Method::GET, &format!("/v1/apps/{}/domains", enc(app)), None)
            .await?;
        Ok(r.results
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `POST /v1/apps/APP/domains`.
    pub async fn add_domain(&self, app: &str, name: &str) -> Result<Vec<String>, SdkError> {
        let r: Results<serde_json::Value> = self
            .json(
                Method::POST,
                &format!("/v1/apps/{}/domains", enc(app)),
                Some(serde_json::json!({ "name": name })),
            )
            .await?;
        Ok(r.results
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `DELETE /v1/apps/APP/domains/NAME`.
    pub async fn remove_domain(&self, app: &str, name: &str) -> Result<Vec<String>, SdkError> {
        let r: Results<serde_json::Value> = self
            .json(
                Method::DELETE,
                &format!("/v1/apps/{}/domains/{}", enc(app), enc(name)),
                None,
            )
            .await?;
        Ok(r.results
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `GET /v1/apps/APP/formation`.
    pub async fn formation(&self, app: &str) -> Result<Vec<FormationEntry>, SdkError> {
        Ok(self
            .json::<Results<FormationEntry>>(
                Method::GET,
                &format!("/v1/apps/{}/formation", enc(app)),
                None,
            )
            .await?
            .results)
    }

    /// `PATCH /v1/apps/APP/formation`: sets instance counts.
    pub async fn scale(
        &self,
        app: &str,
        counts: &BTreeMap<String, u32>,
    ) -> Result<Vec<FormationEntry>, SdkError> {
        let path = format!("/v1/apps/{}/formation", enc(app));
        Ok(self
            .json::<Results<FormationEntry>>(
                Method::PATCH,
                &path,
                Some(serde_json::to_value(counts)?),
            )
            .await?
            .results)
    }

    /// `POST /v1/apps/APP/ps/restart`: rolling restart of a type, an instance, or all.
    pub async fn restart(&self, app: &str, target: Option<&str>) -> Result<Vec<String>, SdkError> {
        let path = format!("/v1/apps/{}/ps/restart", enc(app));
        let v: serde_json::Value = self
            .json(
                Method::POST,
                &path,
                Some(serde_json::json!({ "target": target })),
            )
            .await?;
        Ok(serde_json::from_value(v["restarted"].clone())?)
    }

    /// `GET /v1/apps/APP/releases/N`.
    pub async fn release(&self, app: &str, version: i64) -> Result<ReleaseInfo, SdkError> {
        self.json(
            Method::GET,
            &format!("/v1/apps/{}/releases/{version}", enc(app)),
            None,
        )
        .await
    }

    /// `POST /v1/apps/APP/rollback`: a new release from an old one's slug and config.
    pub async fn rollback(&self, app: &str, version: Option<i64>) -> Result<ReleaseInfo, SdkError> {
        let path = format!("/v1/apps/{}/rollback", enc(app));
        self.json(
            Method::POST,
            &path,
            Some(serde_json::json!({ "version": version })),
        )
        .await
    }

    /// `POST /v1/apps/APP/run`: runs a one-off command, streaming its output. The last line
    /// starts with [`BUILD_RESULT_MARK`] and holds a [`RunResult`].
    pub async fn run(&self, app: &str, command: &str) -> Result<Lines, SdkError> {
        let body = Full::new(Bytes::from(serde_json::to_vec(
            &serde_json::json!({ "command": command }),
        )?))
        .map_err(|never| match never {})
        .boxed_unsync();
        let resp = self
            .send(
                Method::POST,
                &format!("/v1/apps/{}/run", enc(app)),
                body,
                "application/json",
            )
            .await?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        })
    }

    /// `POST /v1/apps/APP/builds?commit=SHA` with a tar of the source: builds and deploys,
    /// streaming the output. The last line starts with [`BUILD_RESULT_MARK`].
    pub async fn build(
        &self,
        app: &str,
        commit: &str,
        tar: RequestBody,
    ) -> Result<Lines, SdkError> {
        let path = format!("/v1/apps/{}/builds?commit={}", enc(app), enc(commit));
        let resp = self
            .send(Method::POST, &path, tar, "application/x-tar")
            .await?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::enc("a b&c"), "a%20b%26c");
        assert_eq!(super::enc("abc-1"), "abc-1");
    }
}
