//! Webhooks with nothing lost: every write logs its change in the same transaction (the
//! outbox, `changes`), and one deliverer per backend posts each change a webhook wants, in
//! order, moving the webhook's durable cursor only after the receiver took it. A crash or a
//! `kill -9` mid-delivery leaves the cursor where it was, so the change is posted again after
//! the restart: at least once. A receiver that fails is retried with a doubling back-off (1 s
//! up to a minute); the webhook waits for it rather than skipping ahead.
//!
//! The body is Enginio's (qtc-api.md §2.12): `{"payload":{"object":…,"meta":{"backendId",
//! "eventName","requestId","userId"}},"receivers":[read subjects]}`, which MWS's enginio
//! receiver takes as it is. Where a delivery goes is the composition root's business (a
//! [`Sink`]): an HTTP URL, or an MWS gateway linked in-process (`gateway:ID`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::EdsError;
use crate::storage::{ChangeRow, Storage, Webhook};

/// One delivery: where, with which headers, what.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The webhook's target.
    pub target: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Bytes,
}

/// Why a delivery did not happen.
#[derive(Debug, Clone)]
pub enum Failed {
    /// Try again later (the receiver is down, slow, or answered with an error).
    Retry(String),
    /// It can never happen (the target is gone): the change is skipped for this webhook.
    Gone(String),
}

/// A boxed delivery.
pub type Delivering = Pin<Box<dyn Future<Output = Result<(), Failed>> + Send>>;

/// Where deliveries go, given by the composition root.
pub trait Sink: Send + Sync + 'static {
    /// Whether a webhook may have this target (checked when one is added).
    fn check(&self, target: &str) -> Result<(), String>;
    /// Delivers one change.
    fn deliver(&self, d: Delivery) -> Delivering;
}

/// The body posted for a change.
pub fn body(backend_id: &str, c: &ChangeRow) -> Value {
    json!({
        "payload": {
            "object": c.object,
            "meta": {
                "backendId": backend_id,
                "eventName": c.event,
                "requestId": c.request_id,
                "userId": c.user_id,
            },
        },
        "receivers": c.receivers,
    })
}

/// Changes read from the log at a time.
const BATCH: usize = 100;

/// How long a quiet deliverer sleeps before looking again without being woken.
const IDLE: Duration = Duration::from_secs(5);

/// The least time from one pass's start to the next when writes woke the deliverer: a burst
/// of writes is then read from the log in one pass, not in a pass (two reads of the storage on
/// blocking threads) per write, for at most this much more latency to the notification
/// stream's subscribers and the webhooks.
const COALESCE: Duration = Duration::from_millis(5);

/// Back-off of a webhook that failed.
struct Backoff {
    failures: u32,
    until: Instant,
}

fn delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EdsError> + Send + 'static,
) -> Result<T, EdsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EdsError::Storage(e.to_string()))?
}

/// One backend's reader of its change log: until `stop`, wakes on `changed` (or every few
/// seconds), hands new changes to the notification stream's subscribers, and delivers what
/// each webhook has not had yet.
pub(crate) async fn run(
    backend_id: String,
    storage: Arc<dyn Storage>,
    sink: Arc<dyn Sink>,
    streams: Arc<crate::stream::Streams>,
    changed: Arc<Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    let mut streamed = {
        let s = storage.clone();
        blocking(move || s.last_change()).await.unwrap_or(0)
    };
    loop {
        let started = Instant::now();
        if let Err(e) = stream(&backend_id, &storage, &streams, &mut streamed).await {
            tracing::error!("eds {backend_id}: notifications: {e}");
        }
        let next = match pass(&backend_id, &storage, &sink, &mut backoff, &stop).await {
            Ok(()) => backoff
                .values()
                .map(|b| b.until)
                .min()
                .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
                .min(IDLE),
            Err(e) => {
                tracing::error!("eds {backend_id}: webhooks: {e}");
                IDLE
            }
        };
        tokio::select! {
            _ = changed.notified() => {
                let rest = COALESCE.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(rest) => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ = tokio::time::sleep(next) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Hands the changes after `cursor` to the stream's subscribers (none: skips them).
async fn stream(
    backend_id: &str,
    storage: &Arc<dyn Storage>,
    streams: &crate::stream::Streams,
    cursor: &mut i64,
) -> Result<(), EdsError> {
    if !streams.has_subscribers(backend_id) {
        let s = storage.clone();
        *cursor = blocking(move || s.last_change()).await?;
        return Ok(());
    }
    loop {
        let (s, after) = (storage.clone(), *cursor);
        let changes = blocking(move || s.changes_after(after, BATCH)).await?;
        let Some(last) = changes.last() else {
            return Ok(());
        };
        *cursor = last.seq;
        let types = {
            let s = storage.clone();
            move |kind: &str| {
                s.type_def(kind)
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.raw["settings"]["websocket"].as_bool() == Some(true))
            }
        };
        streams.publish(backend_id, &changes, &types);
        if changes.len() < BATCH {
            return Ok(());
        }
    }
}

/// One pass over every webhook.
async fn pass(
    backend_id: &str,
    storage: &Arc<dyn Storage>,
    sink: &Arc<dyn Sink>,
    backoff: &mut HashMap<String, Backoff>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), EdsError> {
    let hooks = {
        let s = storage.clone();
        blocking(move || s.webhooks()).await?
    };
    backoff.retain(|id, _| hooks.iter().any(|h| &h.id == id));
    for hook in hooks {
        if backoff
            .get(&hook.id)
            .is_some_and(|b| b.until > Instant::now())
        {
            continue;
        }
        let mut cursor = hook.cursor;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let changes = {
                let s = storage.clone();
                blocking(move || s.changes_after(cursor, BATCH)).await?
            };
            if changes.is_empty() {
                break;
            }
            let n = changes.len();
            let mut failed = false;
            for c in changes {
                if !hook.wants(&c.kind) {
                    cursor = c.seq;
                    continue;
                }
                match deliver_one(backend_id, &hook, &c, sink).await {
                    Ok(()) => {
                        backoff.remove(&hook.id);
                        cursor = c.seq;
                        advance(storage, &hook.id, cursor).await?;
                    }
                    Err(Failed::Gone(why)) => {
                        tracing::warn!(
                            "eds {backend_id}: webhook {} skips change {}: {why}",
                            hook.id,
                            c.seq
                        );
                        cursor = c.seq;
                        advance(storage, &hook.id, cursor).await?;
                    }
                    Err(Failed::Retry(why)) => {
                        let failures = backoff.get(&hook.id).map_or(0, |b| b.failures) + 1;
                        if failures == 1 || failures.is_multiple_of(10) {
                            tracing::warn!(
                                "eds {backend_id}: webhook {} failed ({failures} times), retrying: {why}",
                                hook.id
                            );
                        }
                        backoff.insert(
                            hook.id.clone(),
                            Backoff {
                                failures,
                                until: Instant::now() + delay(failures),
                            },
                        );
                        failed = true;
                        break;
                    }
                }
            }
            // Skipped changes move the cursor too, once per batch.
            if cursor > hook.cursor {
                advance(storage, &hook.id, cursor).await?;
            }
            if failed || n < BATCH {
                break;
            }
        }
    }
    Ok(())
}

async fn deliver_one(
    backend_id: &str,
    hook: &Webhook,
    c: &ChangeRow,
    sink: &Arc<dyn Sink>,
) -> Result<(), Failed> {
    let mut headers: Vec<(String, String)> = hook
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    sink.deliver(Delivery {
        target: hook.target.clone(),
        headers,
        body: Bytes::from(body(backend_id, c).to_string()),
    })
    .await
}

async fn advance(storage: &Arc<dyn Storage>, id: &str, cursor: i64) -> Result<(), EdsError> {
    let (s, id) = (storage.clone(), id.to_owned());
    blocking(move || s.advance_webhook(&id, cursor)).await
}

/// Checks a webhook's definition from the API: `{"url", "objectTypes"?, "headers"?}`.
pub fn parse(v: &Value, sink: &dyn Sink) -> Result<Webhook, EdsError> {
    let invalid = |property: &str, message: String| EdsError::Validation {
        property: property.to_owned(),
        message,
    };
    let url = v
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("url", "can't be blank".to_owned()))?;
    if url.starts_with("gateway:") {
        return Err(invalid(
            "url",
            "gateways are linked with `mar services:link`".to_owned(),
        ));
    }
    sink.check(url).map_err(|m| invalid("url", m))?;
    let types = match v.get("objectTypes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| {
                        invalid("objectTypes", "must be a list of type names".to_owned())
                    })
                    .and_then(|t| {
                        if matches!(t, "users" | "usergroups") {
                            Ok(t.to_owned())
                        } else {
                            crate::types::type_name(t)
                        }
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("objectTypes", "must be a list".to_owned())),
    };
    let mut headers = std::collections::BTreeMap::new();
    if let Some(h) = v.get("headers") {
        let Value::Object(m) = h else {
            return Err(invalid(
                "headers",
                "must be an object of strings".to_owned(),
            ));
        };
        for (k, v) in m {
            let ok_name =
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let value = v
                .as_str()
                .filter(|v| !v.bytes().any(|b| b == b'\r' || b == b'\n'));
            match (ok_name, value) {
                (true, Some(v)) => {
                    headers.insert(k.to_ascii_lowercase(), v.to_owned());
                }
                _ => return Err(invalid("headers", format!("{k:?} is not a usable header"))),
            }
        }
    }
    Ok(Webhook {
        id: crate::ids::new_id(),
        target: url.to_owned(),
        types,
        headers,
        cursor: 0,
        created_at: crate::time::now(),
    })
}

/// The API's view of a webhook (headers' values hidden: they hold receivers' secrets).
pub fn to_json(w: &Webhook) -> Value {
    let (key, value) = match w.target.strip_prefix("gateway:") {
        Some(g) => ("gateway", g),
        None => ("url", w.target.as_str()),
    };
    json!({
        "id": w.id,
        key: value,
        "objectTypes": w.types,
        "headers": w.headers.keys().collect::<Vec<_>>(),
        "createdAt": w.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Acl, Subject};
    use crate::sqlite::SqliteStorage;
    use crate::storage::{Change, Record};
    use std::sync::Mutex;

    /// A sink that keeps what it got, failing the first `fail` deliveries.
    struct Keep {
        got: Mutex<Vec<Value>>,
        fail: Mutex<u32>,
    }

    impl Sink for Keep {
        fn check(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn deliver(&self, d: Delivery) -> Delivering {
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Box::pin(async { Err(Failed::Retry("down".to_owned())) });
            }
            self.got
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&d.body).unwrap());
            Box::pin(async { Ok(()) })
        }
    }

    fn write(s: &SqliteStorage, kind: &str, title: &str) {
        let id = crate::ids::new_id();
        let mut doc = serde_json::Map::new();
        doc.insert("id".into(), json!(id));
        doc.insert("title".into(), json!(title));
        s.insert(
            &Record {
                id,
                kind: kind.to_owned(),
                doc,
                acl: Acl::all(vec![Subject::Everyone]),
            },
            None,
            Change {
                event: "create",
                request_id: Some("r1"),
                user_id: None,
            },
        )
        .unwrap();
    }

    #[tokio::test]
    async fn changes_reach_a_webhook_in_order_once_the_receiver_is_back() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStorage::open(&d.path().join("b.db")).unwrap());
        write(&s, "objects.todos", "before the webhook");
        let keep = Arc::new(Keep {
            got: Mutex::new(Vec::new()),
            fail: Mutex::new(2),
        });
        let hook = parse(
            &json!({"url": "http://x/hook", "objectTypes": ["todos"]}),
            keep.as_ref(),
        )
        .unwrap();
        s.add_webhook(&hook).unwrap();
        write(&s, "objects.todos", "one");
        write(&s, "objects.other", "not wanted");
        write(&s, "objects.todos", "two");
        let storage: Arc<dyn Storage> = s.clone();
        let sink: Arc<dyn Sink> = keep.clone();
        let mut backoff = HashMap::new();
        let stop = tokio_util::sync::CancellationToken::new();
        // Down twice: nothing delivered, the cursor stays.
        for _ in 0..2 {
            backoff.clear();
            pass("b", &storage, &sink, &mut backoff, &stop)
                .await
                .unwrap();
        }
        assert!(keep.got.lock().unwrap().is_empty());
        backoff.clear();
        pass("b", &storage, &sink, &mut backoff, &stop)
            .await
            .unwrap();
        let got = keep.got.lock().unwrap().clone();
        let titles: Vec<&str> = got
            .iter()
            .map(|v| v["payload"]["object"]["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, ["one", "two"]);
        assert_eq!(got[0]["payload"]["meta"]["eventName"], "create");
        assert_eq!(got[0]["payload"]["meta"]["requestId"], "r1");
        assert_eq!(got[0]["payload"]["meta"]["backendId"], "b");
        assert_eq!(
            got[0]["receivers"],
            json!([{"id": "*", "objectType": "aclSubject"}])
        );
        // Delivered once: another pass sends nothing again.
        pass("b", &storage, &sink, &mut backoff, &stop)
            .await
            .unwrap();
        assert_eq!(keep.got.lock().unwrap().len(), 2);
        let cursor = s.webhooks().unwrap()[0].cursor;
        assert_eq!(cursor, s.changes_after(0, 100).unwrap().last().unwrap().seq);
    }
}
