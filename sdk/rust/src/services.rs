//! Typed async clients of the built-in services, as an app's server uses them with the
//! variables an attachment gives it: [`Mws`] (`MWS_ADDRESS`, `MWS_GATEWAY_ID`, `MWS_SECRET`)
//! publishes and reserves sockets, and [`Subscriber`] listens with reconnects that recover
//! what was missed; [`Eds`] (`EDS_ADDRESS`, `EDS_BACKEND_ID`, `EDS_SECRET`) reads and writes
//! objects with a typed [`Query`], signs users in, reads ACLs, uploads and downloads files,
//! searches, and follows the notification stream ([`Notifications`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), mar_sdk::SdkError> {
//! use mar_sdk::services::{Eds, Mws, Query};
//! let eds = Eds::from_env()?;
//! let todo = eds.collection("todos").insert(serde_json::json!({"title": "milk"})).await?;
//! let open = eds.collection("todos").find(&Query::new().eq("done", false).limit(10)).await?;
//! Mws::from_env()?.send("a todo changed", &mws_to_all()).await?;
//! # fn mws_to_all() -> serde_json::Value { serde_json::json!({"sockets": ["*"]}) }
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::transport::{Connector, Trust};
use crate::{SdkError, Stream, enc};

type Http = HyperClient<Connector, Full<Bytes>>;

/// An HTTP client for `http://` and `https://` services, trusting the system's roots and
/// `MAR_CA_CERT`'s.
fn http() -> Result<(Http, Trust), SdkError> {
    let trust = Trust::system()?;
    Ok((
        HyperClient::builder(TokioExecutor::new()).build(trust.connector()),
        trust,
    ))
}

fn env(name: &str) -> Result<String, SdkError> {
    std::env::var(name).map_err(|_| SdkError::Url(format!("{name} is not set: attach the service")))
}

/// Sends one request to `url`; the answer's status and body.
async fn send(
    http: &Http,
    req: Request<Full<Bytes>>,
    url: &str,
) -> Result<(http::StatusCode, Bytes), SdkError> {
    let resp = http.request(req).await.map_err(|cause| SdkError::Connect {
        url: url.to_owned(),
        cause,
    })?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// One call; the answer as JSON, or the service's error (either service's error shape).
async fn call(
    http: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<Value, SdkError> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|_| SdkError::Url(url.to_owned()))?;
    let (status, bytes) = send(http, req, url).await?;
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status.is_success() {
        return Ok(v);
    }
    let e = v
        .get("errors")
        .and_then(|e| e.get(0))
        .or_else(|| v.get("error").filter(|e| e.is_object()))
        .cloned()
        .unwrap_or(Value::Null);
    Err(SdkError::Api {
        status: status.as_u16(),
        reason: e["reason"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or("Error")
            .to_owned(),
        message: e["message"]
            .as_str()
            .or(v["error_description"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
    })
}

/// A push gateway's client (the secret's: servers).
#[derive(Clone)]
pub struct Mws {
    base: String,
    secret: String,
    http: Http,
    trust: Trust,
}

impl Mws {
    /// A gateway at `address` (`http://host:port` or `https://…`), by id and secret; an
    /// error when `MAR_CA_CERT` names a file that cannot be read.
    pub fn new(address: &str, gateway_id: &str, secret: &str) -> Result<Self, SdkError> {
        let (http, trust) = http()?;
        Ok(Self {
            base: format!(
                "{}/v1/gateways/{}",
                address.trim_end_matches('/'),
                enc(gateway_id)
            ),
            secret: secret.to_owned(),
            http,
            trust,
        })
    }

    /// The attached gateway: `MWS_ADDRESS`, `MWS_GATEWAY_ID`, `MWS_SECRET`.
    pub fn from_env() -> Result<Self, SdkError> {
        Self::new(
            &env("MWS_ADDRESS")?,
            &env("MWS_GATEWAY_ID")?,
            &env("MWS_SECRET")?,
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SdkError> {
        let auth = format!("Bearer {}", self.secret);
        call(
            &self.http,
            method,
            &format!("{}/{path}", self.base),
            &[(header::AUTHORIZATION.as_str(), auth.as_str())],
            body.map(|b| Bytes::from(b.to_string())),
        )
        .await
    }

    /// Sends `data` to `receivers` (`{"sockets":["*"]}`, ids, or `{"tags":[…]}`).
    pub async fn send(&self, data: &str, receivers: &Value) -> Result<Value, SdkError> {
        self.call(
            Method::POST,
            "messages",
            Some(json!({"data": data, "receivers": receivers})),
        )
        .await
    }

    /// Reserves a socket with tags: `{"id","uri","expiresAt","tags"}`.
    pub async fn reserve(&self, tags: &[&str]) -> Result<Value, SdkError> {
        self.call(Method::POST, "sockets", Some(json!({ "tags": tags })))
            .await
    }

    /// A public socket's URI (any mode, with the secret).
    pub async fn websocket_uri(&self) -> Result<String, SdkError> {
        let v = self.call(Method::GET, "websocket_uri", None).await?;
        Ok(v["uri"].as_str().unwrap_or_default().to_owned())
    }

    /// Connected sockets, optionally those with `tag`.
    pub async fn sockets(&self, tag: Option<&str>) -> Result<Vec<Value>, SdkError> {
        let path = match tag {
            Some(t) => format!("sockets?tag={}", enc(t)),
            None => "sockets".to_owned(),
        };
        let v = self.call(Method::GET, &path, None).await?;
        Ok(v["results"].as_array().cloned().unwrap_or_default())
    }

    /// Closes a socket.
    pub async fn delete_socket(&self, id: &str) -> Result<(), SdkError> {
        self.call(Method::DELETE, &format!("sockets/{}", enc(id)), None)
            .await
            .map(|_| ())
    }

    /// Listens on a socket reserved with `tags`, reconnecting after a drop and recovering
    /// what was missed (the gateway's numbered history).
    pub fn subscribe(&self, tags: &[&str]) -> Subscriber {
        Subscriber {
            mws: self.clone(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ws: None,
            last: None,
            retry: Duration::from_millis(500),
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<Stream>;

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message's data, once each, in order.
    Message(String),
    /// What was missed could not be recovered (too long away, or the server restarted):
    /// reload the state the messages were about.
    Resync,
}

/// A socket that reconnects and recovers; see [`Mws::subscribe`].
pub struct Subscriber {
    mws: Mws,
    tags: Vec<String>,
    ws: Option<Ws>,
    /// The last message's number and the history's epoch.
    last: Option<(u64, String)>,
    retry: Duration,
}

impl Subscriber {
    async fn connect(&mut self) -> Result<(), SdkError> {
        let tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        let r = self.mws.reserve(&tags).await?;
        let uri = r["uri"].as_str().unwrap_or_default();
        let url = match &self.last {
            Some((seq, epoch)) => format!("{uri}&since={seq}&epoch={}", enc(epoch)),
            None => format!("{uri}&envelope=1"),
        };
        let (ws, _) = self
            .mws
            .trust
            .websocket(url.as_str())
            .await
            .map_err(|e| SdkError::Url(format!("{url}: {e}")))?;
        self.ws = Some(ws);
        Ok(())
    }

    /// The next event; reconnects (every half second) while the gateway cannot be reached.
    pub async fn next(&mut self) -> Event {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            if self.ws.is_none() && self.connect().await.is_err() {
                tokio::time::sleep(self.retry).await;
                continue;
            }
            let Some(ws) = self.ws.as_mut() else {
                continue;
            };
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let Ok(m) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    let epoch = m["epoch"].as_str().unwrap_or_default().to_owned();
                    match m.get("recovered").and_then(Value::as_bool) {
                        Some(false) => {
                            self.last = None;
                            return Event::Resync;
                        }
                        Some(true) => continue,
                        None => {}
                    }
                    if let Some(seq) = m["seq"].as_u64() {
                        self.last = Some((seq, epoch));
                    }
                    return Event::Message(m["data"].as_str().unwrap_or_default().to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.ws = None;
                    tokio::time::sleep(self.retry).await;
                }
            }
        }
    }
}

/// A data store backend's client: the master key's (servers), or a signed-in user's.
#[derive(Clone)]
pub struct Eds {
    base: String,
    backend: String,
    token: String,
    http: Http,
    trust: Trust,
}

impl Eds {
    /// A backend at `address` (`http://` or `https://`), by id, with the master key or a
    /// user's token; an error when `MAR_CA_CERT` names a file that cannot be read.
    pub fn new(address: &str, backend_id: &str, token: &str) -> Result<Self, SdkError> {
        let (http, trust) = http()?;
        Ok(Self {
            base: format!("{}/v1", address.trim_end_matches('/')),
            backend: backend_id.to_owned(),
            token: token.to_owned(),
            http,
            trust,
        })
    }

    /// The attached backend, with its master key: `EDS_ADDRESS`, `EDS_BACKEND_ID`,
    /// `EDS_SECRET`.
    pub fn from_env() -> Result<Self, SdkError> {
        Self::new(
            &env("EDS_ADDRESS")?,
            &env("EDS_BACKEND_ID")?,
            &env("EDS_SECRET")?,
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SdkError> {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("enginio-backend-id", self.backend.as_str())];
        if !self.token.is_empty() {
            headers.push((header::AUTHORIZATION.as_str(), auth.as_str()));
        }
        call(
            &self.http,
            method,
            &format!("{}/{path}", self.base),
            &headers,
            body.map(|b| Bytes::from(b.to_string())),
        )
        .await
    }

    /// One object type: `collection("todos")`, `collection("users")`.
    pub fn collection(&self, kind: &str) -> Collection {
        let path = match kind {
            "users" | "usergroups" => kind.to_owned(),
            other => format!("objects/{}", enc(other.trim_start_matches("objects."))),
        };
        Collection {
            eds: self.clone(),
            path,
        }
    }

    /// Signs a user in: a client acting as that user (and the token answer).
    pub async fn sign_in(&self, username: &str, password: &str) -> Result<(Eds, Value), SdkError> {
        let form = format!(
            "grant_type=password&username={}&password={}",
            enc(username),
            enc(password)
        );
        let v = call(
            &self.http,
            Method::POST,
            &format!("{}/auth/oauth2/token", self.base),
            &[
                ("enginio-backend-id", self.backend.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(Bytes::from(form)),
        )
        .await?;
        let token = v["access_token"].as_str().unwrap_or_default().to_owned();
        Ok((
            Eds {
                token,
                ..self.clone()
            },
            v,
        ))
    }

    /// The signed-in user.
    pub async fn me(&self) -> Result<Value, SdkError> {
        self.call(Method::GET, "user", None).await
    }

    /// Declares a type (the master key).
    pub async fn declare_type(&self, def: Value) -> Result<Value, SdkError> {
        self.call(Method::POST, "object_types", Some(def)).await
    }

    /// Uploads `bytes` as the file in `property` (a ref to `files`) of the object `id` of
    /// `kind`, in one multipart request as the clients send it; the new `files` object.
    pub async fn upload(
        &self,
        kind: &str,
        id: &str,
        property: &str,
        file_name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<Value, SdkError> {
        let kind = match kind {
            "users" | "usergroups" => kind.to_owned(),
            other => format!("objects.{}", other.trim_start_matches("objects.")),
        };
        let object = json!({
            "file": {"fileName": file_name},
            "targetFileProperty": {"objectType": kind, "id": id, "propertyName": property},
        });
        let boundary = format!("mar-sdk-{:016x}", rand_u64());
        let mut body = Vec::with_capacity(bytes.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"object\"\r\nContent-Type: application/json\r\n\r\n{object}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: {content_type}\r\n\r\n",
                file_name.replace(['"', '\r', '\n'], "_")
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![
            ("enginio-backend-id", self.backend.as_str()),
            ("content-type", ct.as_str()),
        ];
        if !self.token.is_empty() {
            headers.push((header::AUTHORIZATION.as_str(), auth.as_str()));
        }
        call(
            &self.http,
            Method::POST,
            &format!("{}/files", self.base),
            &headers,
            Some(Bytes::from(body)),
        )
        .await
    }

    /// A URL that downloads the file for the next 10 minutes with no EDS header (for a page
    /// or another program).
    pub async fn download_url(&self, file_id: &str) -> Result<String, SdkError> {
        let v = self
            .call(
                Method::GET,
                &format!("files/{}/download_url", enc(file_id)),
                None,
            )
            .await?;
        v["expiringUrl"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| SdkError::Url(format!("no expiringUrl in {v}")))
    }

    /// The file's bytes.
    pub async fn download(&self, file_id: &str) -> Result<Bytes, SdkError> {
        let url = self.download_url(file_id).await?;
        let req = Request::get(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|_| SdkError::Url(url.clone()))?;
        let (status, bytes) = send(&self.http, req, &url).await?;
        if !status.is_success() {
            return Err(SdkError::Api {
                status: status.as_u16(),
                reason: "DownloadFailed".to_owned(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    /// Full-text search for `phrase` over the indexed properties of `kinds`; the objects the
    /// caller may read.
    pub async fn search(&self, phrase: &str, kinds: &[&str]) -> Result<Vec<Value>, SdkError> {
        let types: Vec<String> = kinds
            .iter()
            .map(|k| format!("objects.{}", k.trim_start_matches("objects.")))
            .collect();
        let path = format!(
            "search?objectTypes={}&search={}",
            enc(&types.join(",")),
            enc(&json!({"phrase": phrase}).to_string())
        );
        let v = self.call(Method::GET, &path, None).await?;
        Ok(v["results"].as_array().cloned().unwrap_or_default())
    }

    /// The notification stream: every change to objects matching `filter` (such as
    /// `{"data": {"objectType": "objects.todos"}}`, of types declared with
    /// `settings.websocket`) that the caller may read, as `{event, origin, data}`.
    pub async fn notifications(&self, filter: Value) -> Result<Notifications, SdkError> {
        let v = self
            .call(
                Method::GET,
                &format!("stream_url?filter={}", enc(&filter.to_string())),
                None,
            )
            .await?;
        let url = v["expiringUrl"]
            .as_str()
            .ok_or_else(|| SdkError::Url(format!("no expiringUrl in {v}")))?;
        let (ws, _) = self
            .trust
            .websocket(url)
            .await
            .map_err(|e| SdkError::Url(format!("the notification stream at {url}: {e}")))?;
        Ok(Notifications { ws })
    }
}

/// A random number for multipart boundaries (not a secret: it only has to differ from the
/// file's bytes, which a boundary found in them would cut).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// An open notification stream ([`Eds::notifications`]).
pub struct Notifications {
    ws: tokio_tungstenite::WebSocketStream<Stream>,
}

impl Notifications {
    /// The next change, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        return Some(v);
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A typed query: `Query::new().eq("done", false).gt("n", 1).sort("createdAt", true).limit(10)`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    q: serde_json::Map<String, Value>,
    sort: Vec<Value>,
    limit: Option<u64>,
    offset: Option<u64>,
    include: Vec<String>,
}

impl Query {
    /// Everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn op(mut self, path: &str, op: &str, v: Value) -> Self {
        let entry = self.q.entry(path.to_owned()).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        entry[op] = v;
        self
    }

    /// `path` equals `v`.
    pub fn eq(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$eq", v.into())
    }
    /// `path` does not equal `v` (or is absent).
    pub fn ne(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$ne", v.into())
    }
    /// `path` is greater than `v`.
    pub fn gt(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$gt", v.into())
    }
    /// `path` is at least `v`.
    pub fn gte(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$gte", v.into())
    }
    /// `path` is less than `v`.
    pub fn lt(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$lt", v.into())
    }
    /// `path` is at most `v`.
    pub fn lte(self, path: &str, v: impl Into<Value>) -> Self {
        self.op(path, "$lte", v.into())
    }
    /// `path` is one of `vs`.
    pub fn any_of(self, path: &str, vs: Vec<Value>) -> Self {
        self.op(path, "$in", Value::Array(vs))
    }
    /// `path` exists (or not).
    pub fn exists(self, path: &str, yes: bool) -> Self {
        self.op(path, "$exists", Value::Bool(yes))
    }
    /// `path` matches a regular expression.
    pub fn regex(self, path: &str, re: &str) -> Self {
        self.op(path, "$regex", Value::String(re.to_owned()))
    }
    /// Sorted by `path` (descending when `desc`), after the keys given before.
    pub fn sort(mut self, path: &str, desc: bool) -> Self {
        self.sort
            .push(json!({"sortBy": path, "direction": if desc { "desc" } else { "asc" }}));
        self
    }
    /// At most `n` results.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
    /// Skipping `n`.
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = Some(n);
        self
    }
    /// Refs at `property` replaced by their objects.
    pub fn include(mut self, property: &str) -> Self {
        self.include.push(property.to_owned());
        self
    }

    /// The query string.
    pub fn params(&self) -> String {
        let mut p = vec![format!(
            "q={}",
            enc(&Value::Object(self.q.clone()).to_string())
        )];
        if !self.sort.is_empty() {
            p.push(format!(
                "sort={}",
                enc(&Value::Array(self.sort.clone()).to_string())
            ));
        }
        if let Some(l) = self.limit {
            p.push(format!("limit={l}"));
        }
        if let Some(o) = self.offset {
            p.push(format!("offset={o}"));
        }
        if !self.include.is_empty() {
            let inc: serde_json::Map<String, Value> = self
                .include
                .iter()
                .map(|k| (k.clone(), json!({})))
                .collect();
            p.push(format!("include={}", enc(&Value::Object(inc).to_string())));
        }
        p.join("&")
    }
}

/// One object type of a backend.
#[derive(Clone)]
pub struct Collection {
    eds: Eds,
    path: String,
}

impl Collection {
    /// Creates an object; the stored object.
    pub async fn insert(&self, obj: Value) -> Result<Value, SdkError> {
        self.eds.call(Method::POST, &self.path, Some(obj)).await
    }

    /// The objects a query finds.
    pub async fn find(&self, q: &Query) -> Result<Vec<Value>, SdkError> {
        let v = self
            .eds
            .call(Method::GET, &format!("{}?{}", self.path, q.params()), None)
            .await?;
        Ok(v["results"].as_array().cloned().unwrap_or_default())
    }

    /// How many objects a query finds.
    pub async fn count(&self, q: &Query) -> Result<u64, SdkError> {
        let v = self
            .eds
            .call(
                Method::GET,
                &format!("{}?{}&count=1", self.path, q.params()),
                None,
            )
            .await?;
        Ok(v["count"].as_u64().unwrap_or(0))
    }

    /// One object.
    pub async fn get(&self, id: &str) -> Result<Value, SdkError> {
        self.eds
            .call(Method::GET, &format!("{}/{}", self.path, enc(id)), None)
            .await
    }

    /// Merges properties into an object.
    pub async fn update(&self, id: &str, props: Value) -> Result<Value, SdkError> {
        self.eds
            .call(
                Method::PUT,
                &format!("{}/{}", self.path, enc(id)),
                Some(props),
            )
            .await
    }

    /// `$push`, `$pull`, `$inc`, `$set`, `$unset`.
    pub async fn atomic(&self, id: &str, ops: Value) -> Result<Value, SdkError> {
        self.eds
            .call(
                Method::PUT,
                &format!("{}/{}/atomic", self.path, enc(id)),
                Some(ops),
            )
            .await
    }

    /// Deletes an object.
    pub async fn remove(&self, id: &str) -> Result<(), SdkError> {
        self.eds
            .call(Method::DELETE, &format!("{}/{}", self.path, enc(id)), None)
            .await
            .map(|_| ())
    }

    /// An object's ACL.
    pub async fn access(&self, id: &str) -> Result<Value, SdkError> {
        self.eds
            .call(
                Method::GET,
                &format!("{}/{}/access", self.path, enc(id)),
                None,
            )
            .await
    }

    /// Adds grants to an object's ACL.
    pub async fn grant(&self, id: &str, acl: Value) -> Result<Value, SdkError> {
        self.eds
            .call(
                Method::PUT,
                &format!("{}/{}/access", self.path, enc(id)),
                Some(acl),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_build_the_wire_form() {
        let q = Query::new()
            .eq("done", false)
            .gt("n", 1)
            .lt("n", 5)
            .sort("createdAt", true)
            .limit(10)
            .include("creator");
        let p = q.params();
        assert!(
            p.starts_with("q=%7B%22done%22%3A%7B%22%24eq%22%3Afalse%7D"),
            "{p}"
        );
        assert!(
            p.contains("limit=10") && p.contains("sort=") && p.contains("include="),
            "{p}"
        );
        assert_eq!(
            Value::Object(q.q),
            json!({"done": {"$eq": false}, "n": {"$gt": 1, "$lt": 5}})
        );
    }
}
