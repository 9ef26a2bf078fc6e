//! The gateways' REST API and WebSocket endpoint, as Qt Cloud Services' MWS spoke them
//! (`shared/qtc-api.md` §3), behind a [`mar_http::Handler`]: `/v1/gateways/ID/…`, and the
//! early alias `/v1/instances/ID/…`, with trailing slashes and a missing Content-Type
//! tolerated. The WebSocket endpoint is `/v1/gateways/ID/socket?token=T` (the URI
//! `websocket_uri` and `POST sockets` hand out); its sessions run on the gateways' own
//! executor, never on the platform's threads that make blocking SQLite calls.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mar_http::{Body, Handler, ResponseFuture};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::forward::{self, Forward, ForwardStats, Origin, Resolve};
use crate::hub::{Hub, HubOptions, Receivers};
use crate::identity::{Denied, Verifier};
use crate::session::{self, SessionOptions};

/// Who may call a gateway's API without its secret (`identityProvider` in its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Public: `websocket_uri` and `messages` need no token.
    #[default]
    None,
    /// Only the secret opens the API; the app's server reserves sockets for its clients.
    Custom,
    /// An EDS backend's signed-in users get socket URIs tagged with their ids and groups;
    /// the rest needs the secret.
    Eds,
}

impl Access {
    /// The mode named by [`Access::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Access::None),
            "custom" => Some(Access::Custom),
            "eds" => Some(Access::Eds),
            _ => None,
        }
    }

    /// `none`, `custom` or `eds`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Custom => "custom",
            Access::Eds => "eds",
        }
    }
}

/// The largest `data` a message may carry.
pub const MAX_MESSAGE: usize = 64 << 10;

/// What a gateway's owner configures through `PUT configuration`, kept by the composition
/// root: the access mode in a column of its own, the rest as [`GatewayConfig::settings_json`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Who may call the API without the secret.
    pub access: Access,
    /// Where clients' frames go, if anywhere.
    pub forward: Option<Forward>,
    /// The EDS backend whose users the `eds` mode admits.
    pub eds_backend: Option<String>,
}

impl GatewayConfig {
    /// The settings beside the access mode, as JSON to keep.
    pub fn settings_json(&self) -> String {
        let mut v = json!({});
        if let Some(f) = &self.forward {
            v["forward"] = json!(f);
        }
        if let Some(b) = &self.eds_backend {
            v["edsBackend"] = json!(b);
        }
        v.to_string()
    }

    /// A kept configuration (an unreadable part is left at its default: the gateway still
    /// serves, and its owner sees what it has in `GET configuration`).
    pub fn from_stored(access: &str, settings: &str) -> Self {
        let settings: Value = serde_json::from_str(settings).unwrap_or(Value::Null);
        Self {
            access: Access::parse(access).unwrap_or_default(),
            forward: settings.get("forward").and_then(|f| Forward::parse(f).ok()),
            eds_backend: settings
                .get("edsBackend")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

/// One gateway: its identity, configuration and live state.
pub struct Gateway {
    /// Its id (in URLs).
    pub id: String,
    /// Its name (the service instance's).
    pub name: String,
    secret: String,
    config: RwLock<GatewayConfig>,
    hub: Hub,
    forwarded: Arc<ForwardStats>,
}

impl Gateway {
    /// Its access mode now.
    pub fn access(&self) -> Access {
        self.config().access
    }

    /// Its configuration now.
    pub fn config(&self) -> GatewayConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes its configuration.
    pub fn set_config(&self, c: GatewayConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = c;
    }

    /// Takes an EDS change as the enginio webhook receiver does (its data to the sockets
    /// tagged with the object's read-ACL subjects): for a data store linked in-process.
    pub fn receive_enginio(&self, body: &[u8]) -> Result<(), String> {
        let (data, receivers) =
            enginio_message(body).map_err(|(property, message)| format!("{property} {message}"))?;
        self.hub.publish(
            Bytes::copy_from_slice(data.as_bytes()),
            &receivers,
            Instant::now(),
        );
        Ok(())
    }

    /// Counts of the frames forwarded to the app.
    pub fn forwarded(&self) -> &ForwardStats {
        &self.forwarded
    }

    /// Its live state.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Every gateway of the server, with the executor their sessions run on.
pub struct Gateways {
    map: RwLock<HashMap<String, Arc<Gateway>>>,
    executor: tokio::runtime::Handle,
    _runtime: Option<RuntimeGuard>,
    session: SessionOptions,
    shutdown: CancellationToken,
    on_config: ConfigChanged,
    resolve: Resolve,
    verifier: Option<Arc<dyn Verifier>>,
    sessions: tokio_util::task::TaskTracker,
    /// Open sockets per client address, across gateways.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Held while a configuration is kept, so changes are kept in the order they were made.
    keeping: Mutex<()>,
}

/// Called when a gateway's configuration changes through the API, to keep it: on a blocking
/// thread, before the API answers (it may write to a database).
pub type ConfigChanged = Arc<dyn Fn(&str, &GatewayConfig) + Send + Sync>;

/// One open socket's place in its address's count, given back when the session ends.
struct AddressSlot {
    gateways: Arc<Gateways>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut per = self
            .gateways
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// Shuts the gateways' runtime down without blocking when they go.
struct RuntimeGuard(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Gateways {
    /// No gateways yet; sessions run on a runtime of their own (one thread: they only move
    /// bytes), and end with Close 1012 when `shutdown` is cancelled; `on_config` keeps a
    /// gateway's configuration when the API changes it; `resolve` finds where a gateway's
    /// clients' frames are forwarded; `verifier` checks EDS users for the `eds` mode (without
    /// one, that mode is refused).
    pub fn new(
        session: SessionOptions,
        shutdown: CancellationToken,
        on_config: ConfigChanged,
        resolve: Resolve,
        verifier: Option<Arc<dyn Verifier>>,
    ) -> std::io::Result<Arc<Self>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mar-mws")
            .enable_all()
            .build()?;
        Ok(Arc::new(Self {
            map: RwLock::new(HashMap::new()),
            executor: rt.handle().clone(),
            _runtime: Some(RuntimeGuard(Some(rt))),
            session,
            shutdown,
            on_config,
            resolve,
            verifier,
            sessions: tokio_util::task::TaskTracker::new(),
            per_address: Mutex::new(HashMap::new()),
            keeping: Mutex::new(()),
        }))
    }

    /// Adds (or replaces) a gateway.
    pub fn add(&self, id: &str, name: &str, secret: &str, config: GatewayConfig) -> Arc<Gateway> {
        let g = Arc::new(Gateway {
            id: id.to_owned(),
            name: name.to_owned(),
            secret: secret.to_owned(),
            config: RwLock::new(config),
            hub: Hub::new(HubOptions::default()),
            forwarded: Arc::default(),
        });
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), g.clone());
        g
    }

    /// Removes a gateway; its sockets are closed (deleted).
    pub fn remove(&self, id: &str) {
        let g = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(g) = g {
            for s in g.hub.sockets(None) {
                g.hub.delete(&s.id);
            }
        }
    }

    /// A gateway by id.
    pub fn get(&self, id: &str) -> Option<Arc<Gateway>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Waits (at most `grace`) for every session to end, after the shutdown token fired:
    /// their Close 1012 frames are sent before the server exits.
    pub async fn closed(&self, grace: std::time::Duration) {
        self.sessions.close();
        let _ = tokio::time::timeout(grace, self.sessions.wait()).await;
    }

    /// Takes a place for one more socket from `ip`, if it holds fewer than the limit.
    fn take_slot(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut per = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(ip).or_insert(0);
        if *n >= self.session.max_per_address {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            gateways: self.clone(),
            ip,
        })
    }

    /// Whether `path` is one this API serves.
    pub fn serves(path: &str) -> bool {
        path.starts_with("/v1/gateways/") || path.starts_with("/v1/instances/")
    }
}

/// The MWS handler.
#[derive(Clone)]
pub struct MwsHandler {
    gateways: Arc<Gateways>,
}

impl MwsHandler {
    /// Serves `gateways`.
    pub fn new(gateways: Arc<Gateways>) -> Self {
        Self { gateways }
    }
}

impl Handler for MwsHandler {
    fn call(&self, req: Request<Body>) -> ResponseFuture {
        let gateways = self.gateways.clone();
        Box::pin(async move { serve(&gateways, req).await })
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(mar_http::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"reason": reason, "message": message}}),
    )
}

fn refused(why: crate::hub::Refused) -> Response<Body> {
    match why {
        crate::hub::Refused::TooMany => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "too many sockets are waiting for their clients on this gateway; try again in a few minutes",
        ),
        crate::hub::Refused::NoRandomSource => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the server's random source failed: no socket token can be made",
        ),
    }
}

fn invalid(property: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"errors": [{"reason": "ValidationFailed", "property": property, "message": message}]}),
    )
}

fn rfc3339(t: SystemTime) -> String {
    // RFC 3339 UTC with milliseconds, as the Qt Cloud services wrote dates.
    humantime::format_rfc3339_millis(t).to_string()
}

/// Tags as the NODE SDK sends them: strings kept, numbers and other values as their JSON.
fn tags_of(v: Option<&Value>) -> Vec<String> {
    let as_tag = |t: &Value| match t {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(as_tag).collect(),
        Some(other) => vec![as_tag(other)],
    }
}

/// A `receivers` list: strings (numbers taken as their digits), or absent/null for none.
fn strings(v: Option<&Value>) -> Result<Option<Vec<String>>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err("must be a list of strings"),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err("must be a list of strings"),
    }
}

async fn read_json(req: Request<Body>) -> Result<Value, Response<Body>> {
    let buf = read_raw(req).await?;
    if buf.is_empty() {
        return Ok(json!({}));
    }
    // Old clients send no Content-Type: the body is JSON whatever it says.
    serde_json::from_slice(&buf).map_err(|e| invalid("body", &format!("is not JSON: {e}")))
}

/// An EDS webhook (`shared/qtc-api.md` §2.12) as the message MWS delivers: the `payload`'s JSON
/// text exactly as sent (or the string, when a client sent it as one), to the sockets the
/// object's read-ACL subjects name: `aclSubject` `*` is every socket, `users`/`usergroups`
/// ids are the tags `users.ID` and `usergroups.ID`.
fn enginio_message(body: &[u8]) -> Result<(String, Receivers), (&'static str, &'static str)> {
    #[derive(serde::Deserialize)]
    struct Hook<'a> {
        #[serde(borrow)]
        payload: Option<&'a serde_json::value::RawValue>,
        receivers: Option<Vec<Subject>>,
    }
    #[derive(serde::Deserialize)]
    struct Subject {
        id: Value,
        #[serde(rename = "objectType")]
        object_type: String,
    }
    let hook: Hook<'_> =
        serde_json::from_slice(body).map_err(|_| ("body", "is not an enginio webhook"))?;
    let payload = hook.payload.ok_or(("payload", "is missing"))?;
    let subjects = hook.receivers.ok_or(("receivers", "is missing"))?;
    let data = match serde_json::from_str::<String>(payload.get()) {
        Ok(text) => text,
        Err(_) => payload.get().to_owned(),
    };
    let mut receivers = Receivers::default();
    for s in subjects {
        let id = match &s.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match s.object_type.as_str() {
            "aclSubject" if id == "*" => receivers.sockets = Some(vec!["*".to_owned()]),
            "users" | "usergroups" => receivers
                .tags
                .get_or_insert_with(Vec::new)
                .push(format!("{}.{id}", s.object_type)),
            _ => {}
        }
    }
    Ok((data, receivers))
}

async fn read_raw(req: Request<Body>) -> Result<Vec<u8>, Response<Body>> {
    let limit = MAX_MESSAGE * 2 + 4096;
    let mut body = req.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the request body broke off",
            ));
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "TooLarge",
                    "request body too large",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn serve(gateways: &Arc<Gateways>, mut req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let rest = path
        .strip_prefix("/v1/gateways/")
        .or_else(|| path.strip_prefix("/v1/instances/"))
        .unwrap_or("");
    let mut parts = rest.split('/');
    let id = parts.next().unwrap_or("");
    let resource: Vec<&str> = parts.collect();
    let Some(gw) = gateways.get(id) else {
        return error(StatusCode::NOT_FOUND, "NotFound", "no such gateway");
    };
    let authed = mar_http::credentials::bearer_of(req.headers())
        .is_some_and(|t| mar_http::credentials::secrets_match(t.as_bytes(), gw.secret.as_bytes()));
    let has_auth = req.headers().contains_key(header::AUTHORIZATION);
    let deny = || error(StatusCode::UNAUTHORIZED, "AccessDenied", "Access denied");
    // Public resources in `none` mode; everything else needs the secret. A wrong secret is
    // refused even where none is needed, so a client learns its mistake.
    let public_ok = gw.access() == Access::None && !has_auth;
    let method = req.method().clone();
    let now = Instant::now();
    let base = socket_base(&req, &gw.id);
    match (method, resource.as_slice()) {
        (Method::GET, ["socket"]) => upgrade(gateways, &gw, &mut req),
        (Method::GET, ["websocket_uri"]) => {
            let mut tags = Vec::new();
            if gw.access() == Access::Eds && !authed {
                // An EDS user's token: its socket carries the user's and its groups' tags.
                let token = mar_http::credentials::bearer_of(req.headers())
                    .unwrap_or_default()
                    .to_owned();
                match eds_user(gateways, &gw, &token).await {
                    Ok(id) => tags = id.tags(),
                    Err(r) => return r,
                }
            } else if !(authed || public_ok) {
                return deny();
            }
            let r = match gw.hub.reserve(tags, now) {
                Ok(r) => r,
                Err(why) => return refused(why),
            };
            json_response(
                StatusCode::OK,
                &json!({
                    "uri": format!("{base}?token={}", r.token),
                    "expiresAt": rfc3339(SystemTime::now() + (r.expires_at - now)),
                    "tags": r.tags,
                }),
            )
        }
        (Method::POST, ["messages"]) => {
            if gw.access() == Access::Eds && !authed && has_auth {
                // A user's token is known but does not let it publish.
                let token = mar_http::credentials::bearer_of(req.headers())
                    .unwrap_or_default()
                    .to_owned();
                if eds_user(gateways, &gw, &token).await.is_ok() {
                    return error(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "an EDS user may open sockets, not publish: the secret publishes",
                    );
                }
            }
            if !(authed || public_ok) {
                return deny();
            }
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(data) = body.get("data").and_then(Value::as_str) else {
                return invalid("data", "must be a string");
            };
            if data.len() > MAX_MESSAGE {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "TooLarge",
                    &format!("data is larger than {} KiB", MAX_MESSAGE >> 10),
                );
            }
            let Some(receivers) = body.get("receivers").filter(|r| r.is_object()) else {
                return invalid("receivers", "is missing");
            };
            let parsed = match (
                strings(receivers.get("sockets")),
                strings(receivers.get("tags")),
            ) {
                (Ok(sockets), Ok(tags)) => Receivers { sockets, tags },
                (Err(m), _) => return invalid("receivers.sockets", m),
                (_, Err(m)) => return invalid("receivers.tags", m),
            };
            gw.hub
                .publish(Bytes::copy_from_slice(data.as_bytes()), &parsed, now);
            json_response(
                StatusCode::CREATED,
                &json!({"data": data, "receivers": receivers}),
            )
        }
        (Method::POST, ["webhook_receivers", "enginio"]) => {
            if !authed {
                return deny();
            }
            let body = match read_raw(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match enginio_message(&body) {
                Ok((data, receivers)) => {
                    gw.hub
                        .publish(Bytes::copy_from_slice(data.as_bytes()), &receivers, now);
                    json_response(
                        StatusCode::CREATED,
                        &json!({"data": data, "receivers": {"sockets": receivers.sockets, "tags": receivers.tags}}),
                    )
                }
                Err((property, message)) => invalid(property, message),
            }
        }
        (Method::POST, ["sockets"]) => {
            if !authed {
                return deny();
            }
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let r = match gw.hub.reserve(tags_of(body.get("tags")), now) {
                Ok(r) => r,
                Err(why) => return refused(why),
            };
            json_response(
                StatusCode::CREATED,
                &json!({
                    "id": r.id,
                    "uri": format!("{base}?token={}", r.token),
                    "expiresAt": rfc3339(SystemTime::now() + (r.expires_at - now)),
                    "tags": r.tags,
                }),
            )
        }
        (Method::GET, ["sockets"]) => {
            if !authed {
                return deny();
            }
            let tag = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("tag="))
                    .map(|v| mar_http::percent_decode(v, true))
            });
            let results: Vec<Value> = gw
                .hub
                .sockets(tag.as_deref())
                .into_iter()
                .map(
                    |s| json!({"id": s.id, "connectedAt": rfc3339(s.connected_at), "tags": s.tags}),
                )
                .collect();
            json_response(StatusCode::OK, &json!({ "results": results }))
        }
        (Method::GET, ["sockets", sid]) => {
            if !authed {
                return deny();
            }
            match gw.hub.socket(sid) {
                Some(s) => json_response(
                    StatusCode::OK,
                    &json!({"id": s.id, "connectedAt": rfc3339(s.connected_at), "tags": s.tags}),
                ),
                None => json_response(StatusCode::NOT_FOUND, &json!({})),
            }
        }
        (Method::DELETE, ["sockets", sid]) => {
            if !authed {
                return deny();
            }
            if gw.hub.delete(sid) {
                json_response(StatusCode::OK, &json!({}))
            } else {
                json_response(StatusCode::NOT_FOUND, &json!({}))
            }
        }
        (Method::GET, ["configuration"]) => {
            if !authed {
                return deny();
            }
            json_response(StatusCode::OK, &configuration(&gw))
        }
        (Method::PUT, ["configuration"]) => {
            if !authed {
                return deny();
            }
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let mut config = gw.config();
            if let Some(ip) = body.get("identityProvider") {
                let kind = ip.get("type").and_then(Value::as_str).or(ip.as_str());
                match kind.and_then(Access::parse) {
                    Some(Access::Eds) => {
                        let backend = ip.get("backendId").and_then(Value::as_str).unwrap_or("");
                        let known = gateways
                            .verifier
                            .as_ref()
                            .is_some_and(|v| v.backend_exists(backend));
                        if !known {
                            return invalid(
                                "identityProvider.backendId",
                                "must name an EDS backend of this server",
                            );
                        }
                        config.access = Access::Eds;
                        config.eds_backend = Some(backend.to_owned());
                    }
                    Some(a) => {
                        config.access = a;
                        config.eds_backend = None;
                    }
                    None => {
                        return invalid("identityProvider", "type must be none, eds or custom");
                    }
                }
            }
            match body.get("forward") {
                None => {}
                Some(Value::Null) => config.forward = None,
                Some(f) => match Forward::parse(f) {
                    Ok(f) => {
                        // Checked now, so a mistake shows at once rather than as frames
                        // silently dropped (a later detach drops them, counted).
                        if let Err(why) = (gateways.resolve)(&gw.id, f.app.as_deref()) {
                            return invalid("forward", &why);
                        }
                        config.forward = Some(f);
                    }
                    Err(m) => return invalid("forward", m),
                },
            }
            if config != gw.config() {
                gw.set_config(config);
                // Kept before the answer, so a 200 survives a restart; off this thread (the
                // keeper may block); the configuration current under the lock is the one
                // kept, so concurrent changes end as the last one made.
                let (all, gw) = (gateways.clone(), gw.clone());
                let kept = tokio::task::spawn_blocking(move || {
                    let _order = all.keeping.lock().unwrap_or_else(|e| e.into_inner());
                    (all.on_config)(&gw.id, &gw.config());
                })
                .await;
                if kept.is_err() {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "the configuration could not be kept",
                    );
                }
            }
            json_response(StatusCode::OK, &configuration(&gw))
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", "no such resource"),
    }
}

fn configuration(gw: &Gateway) -> Value {
    let config = gw.config();
    let traffic = gw.hub.traffic();
    let mut v = json!({
        "id": gw.id,
        "name": gw.name,
        "identityProvider": match (&config.access, &config.eds_backend) {
            (Access::Eds, Some(b)) => json!({"type": "eds", "backendId": b}),
            (a, _) => json!({"type": a.as_str()}),
        },
        "permissions": {"read": ["*"], "write": ["*"]},
        "forwarded": {
            "delivered": gw.forwarded.delivered.load(std::sync::atomic::Ordering::Relaxed),
            "dropped": gw.forwarded.dropped.load(std::sync::atomic::Ordering::Relaxed),
        },
        "traffic": {
            "published": traffic.published,
            "delivered": traffic.delivered,
            "sockets": traffic.sockets,
        },
    });
    if let Some(f) = config.forward {
        v["forward"] = json!(f);
    }
    v
}

/// The EDS user a token stands for, in a gateway's `eds` mode; else the answer to give.
async fn eds_user(
    gateways: &Gateways,
    gw: &Gateway,
    token: &str,
) -> Result<crate::identity::Identity, Response<Body>> {
    let deny = |m: &str| error(StatusCode::UNAUTHORIZED, "AccessDenied", m);
    let (Some(verifier), Some(backend)) = (&gateways.verifier, gw.config().eds_backend) else {
        return Err(deny("the gateway's EDS backend is not available"));
    };
    if token.is_empty() {
        return Err(deny(
            "sign in to the EDS backend and send its token as Bearer",
        ));
    }
    match verifier.user(&backend, token).await {
        Ok(id) => Ok(id),
        Err(Denied::Unknown(m)) => Err(deny(&m)),
        Err(Denied::Failed(m)) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &m,
        )),
    }
}

/// `ws(s)://HOST/v1/gateways/ID/socket`, from the request's own host and scheme.
fn socket_base(req: &Request<Body>, id: &str) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let secure = mar_http::Connection::of(req).is_some_and(|c| c.scheme == mar_http::Scheme::Https);
    format!(
        "{}://{host}/v1/gateways/{id}/socket",
        if secure { "wss" } else { "ws" }
    )
}

/// Answers a WebSocket handshake to `socket?token=T` and runs the session on the gateways'
/// executor. A bad token gets the handshake too, then a Close saying why (as MWS did: the
/// client sees the reason, not a failed upgrade).
fn upgrade(gateways: &Arc<Gateways>, gw: &Arc<Gateway>, req: &mut Request<Body>) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let (Some(key), true) = (key, is_ws) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "this is the gateway's WebSocket endpoint: connect with a WebSocket client",
        );
    };
    let param = |name: &str| {
        req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(|v| mar_http::percent_decode(v, true))
        })
    };
    // A flood of sockets from one address is refused before its token is used, so a client
    // that backs off can still connect with it.
    let socket = mar_http::Connection::of(req).and_then(|c| c.socket);
    let slot = match mar_http::Connection::of(req) {
        Some(c) => match gateways.take_slot(c.client.ip()) {
            Some(slot) => Some(slot),
            None => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyConnections",
                    &format!(
                        "{} holds {} sockets, the most one address may hold",
                        c.client.ip(),
                        gateways.session.max_per_address
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
                return r;
            }
        },
        None => None,
    };
    let token = param("token").unwrap_or_default();
    // Beyond the original: `since=N&epoch=E` recovers what the client missed since message N,
    // and `envelope=1` (implied by `since`) numbers every message so it can.
    let since = param("since").and_then(|n| n.parse::<u64>().ok());
    let epoch = param("epoch").unwrap_or_default();
    let framing = if since.is_some() || param("envelope").as_deref() == Some("1") {
        session::Framing::Envelope {
            epoch: gw.hub.epoch().to_owned(),
        }
    } else {
        session::Framing::Raw
    };
    let on_upgrade = hyper::upgrade::on(req);
    // The token is used now, before the handshake's answer: once a client sees 101, every
    // message published after is queued for it (a publish right after connecting is not lost
    // to the time the session takes to start).
    let joined = match since {
        Some(after) => gw
            .hub
            .connect_after(&token, &epoch, after, Instant::now())
            .map(|(c, r)| (c, Some(r))),
        None => gw.hub.connect(&token, Instant::now()).map(|c| (c, None)),
    };
    let (gateways, gw) = (gateways.clone(), gw.clone());
    let (tracker, executor) = (gateways.sessions.clone(), gateways.executor.clone());
    tracker.spawn_on(
        async move {
            let _slot = slot;
            let Ok(upgraded) = on_upgrade.await else {
                // The client went away during the handshake: forget its socket.
                if let Ok((connected, _)) = &joined {
                    gw.hub.disconnect(&connected.id);
                }
                return;
            };
            // The connection is held (as `upgraded`) while its send buffer is capped.
            if let Some(socket) = socket
                && let Err(e) = socket.cap_send_buffer(session::SEND_BUFFER)
            {
                tracing::debug!("cannot cap a gateway socket's send buffer: {e}");
            }
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let mut ws =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(session::config())).await;
            match joined {
                Ok((connected, recovery)) => {
                    let forward = gw.config().forward.map(|f| {
                        let origin = Origin {
                            gateway: gw.id.clone(),
                            secret: gw.secret.clone(),
                            socket: connected.id.clone(),
                            tags: connected.tags.clone(),
                        };
                        forward::spawn(
                            f,
                            origin,
                            gateways.resolve.clone(),
                            gw.forwarded.clone(),
                            &gateways.sessions,
                            &gateways.executor,
                        )
                    });
                    session::run(
                        ws,
                        connected,
                        &gw.hub,
                        &gateways.session,
                        &gateways.shutdown,
                        session::Opening {
                            framing,
                            recovery,
                            forward,
                        },
                    )
                    .await;
                }
                Err(e) => {
                    let frame = CloseFrame {
                        code: CloseCode::Policy,
                        reason: e.reason().into(),
                    };
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        ws.close(Some(frame)),
                    )
                    .await;
                }
            }
        },
        &executor,
    );
    mar_http::switching_protocols(
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_372_437_512_369);
        assert_eq!(rfc3339(t), "2013-06-28T16:38:32.369Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn enginio_webhooks_become_messages_to_acl_subjects() {
        let body = br#"{"payload": {"object": {"id": "o1", "b": 1, "a": 2}, "meta": {"eventName": "create"}},
            "receivers": [{"id": "u1", "objectType": "users"}, {"id": "g1", "objectType": "usergroups"}]}"#;
        let (data, r) = enginio_message(body).unwrap();
        // The payload's text as sent (key order and all), not re-encoded.
        assert_eq!(
            data,
            r#"{"object": {"id": "o1", "b": 1, "a": 2}, "meta": {"eventName": "create"}}"#
        );
        assert_eq!(
            r.tags,
            Some(vec!["users.u1".to_owned(), "usergroups.g1".to_owned()])
        );
        assert_eq!(r.sockets, None);
        let (data, r) = enginio_message(
            br#"{"payload": "{\"x\":1}", "receivers": [{"id": "*", "objectType": "aclSubject"}]}"#,
        )
        .unwrap();
        assert_eq!(data, r#"{"x":1}"#);
        assert_eq!(r.sockets, Some(vec!["*".to_owned()]));
        assert_eq!(
            enginio_message(br#"{"receivers": []}"#).unwrap_err().0,
            "payload"
        );
        assert_eq!(
            enginio_message(br#"{"payload": {}}"#).unwrap_err().0,
            "receivers"
        );
        assert_eq!(enginio_message(b"nope").unwrap_err().0, "body");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(mar_http::credentials::secrets_match(b"abc", b"abc"));
        assert!(!mar_http::credentials::secrets_match(b"abc", b"abd"));
        assert!(!mar_http::credentials::secrets_match(b"abc", b"ab"));
    }

    #[test]
    fn tags_as_the_node_sdk_sends_them() {
        assert_eq!(
            tags_of(Some(&json!(["a", 1, {"x": 2}]))),
            ["a", "1", "{\"x\":2}"]
        );
        assert_eq!(tags_of(Some(&json!("solo"))), ["solo"]);
        assert!(tags_of(None).is_empty());
        assert_eq!(
            strings(Some(&json!(["*", 3]))),
            Ok(Some(vec!["*".to_owned(), "3".to_owned()]))
        );
        assert!(strings(Some(&json!([{}]))).is_err());
        assert_eq!(strings(Some(&Value::Null)), Ok(None));
    }
}
