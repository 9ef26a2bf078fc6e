//! The notification stream of `EnginioBackendConnection` (qtc-api.md §2.11): `GET
//! /v1/stream_url?filter=…` hands out a single-use URL; the client opens a plain TCP
//! connection to its host and port (never TLS, whatever the scheme) and writes a WebSocket
//! handshake, whose answer qtenginio matches byte for byte, header names' case included
//! (`Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Accept: …`). An HTTP server
//! library writes header names in lower case, so the stream has a listener of its own that
//! writes the handshake itself, then speaks WebSocket with tungstenite.
//!
//! Each message is one unfragmented text frame `{"event","origin":{"apiRequestId"},"data"}`
//! for a change that matches the subscription's filter (`event`, and `data`'s properties),
//! to an object the subscriber may read, of a type declared with `settings.websocket`, as
//! Enginio required. The stream reads the same change log as the webhooks. The server pings
//! every 30 s with a payload (qtenginio handles empty frames late) and echoes the client's
//! Close code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::acl::{Caller, Subject};
use crate::storage::ChangeRow;

/// How long a stream URL waits for its client.
pub const URL_TTL: Duration = Duration::from_secs(300);
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Subscriptions waiting or connected, per server.
pub const MAX_STREAMS: usize = 10_000;
/// Connections the stream's listener holds at once, subscribers and handshakes together.
pub const MAX_CONNECTIONS: usize = MAX_STREAMS + 1024;
/// Messages a slow subscriber may have waiting before it is dropped.
const QUEUE: usize = 256;

/// What a subscriber asked for, and who it is.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The backend.
    pub backend: String,
    /// Who subscribed (what it may read).
    pub caller: Caller,
    /// `{"event"?, "data"?: {…}}`.
    pub filter: Value,
}

impl Subscription {
    /// Whether a change goes to this subscriber.
    pub fn wants(&self, c: &ChangeRow) -> bool {
        if let Some(e) = self.filter.get("event").and_then(Value::as_str)
            && e != c.event
        {
            return false;
        }
        if let Some(Value::Object(want)) = self.filter.get("data")
            && want.iter().any(|(k, v)| c.object.get(k) != Some(v))
        {
            return false;
        }
        if self.caller.is_master() {
            return true;
        }
        c.receivers.as_array().is_some_and(|subjects| {
            subjects
                .iter()
                .filter_map(|s| Subject::parse(s).ok())
                .any(|s| self.caller.is(&s))
        })
    }
}

/// The message for a change.
pub fn message(c: &ChangeRow) -> String {
    json!({
        "event": c.event,
        "origin": {"apiRequestId": c.request_id},
        "data": c.object,
    })
    .to_string()
}

struct Subscriber {
    sub: Subscription,
    tx: mpsc::Sender<String>,
}

/// The stream's state: tokens waiting for their client, and connected subscribers.
#[derive(Default)]
pub struct Streams {
    waiting: Mutex<HashMap<String, (Subscription, Instant)>>,
    connected: Mutex<Vec<Subscriber>>,
    addr: Mutex<Option<SocketAddr>>,
}

impl Streams {
    /// Where the stream's listener is (once it listens).
    pub fn addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A single-use token for a subscription; `None` when too many wait or connect.
    pub fn reserve(&self, sub: Subscription) -> Option<String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        waiting.retain(|_, (_, at)| now.duration_since(*at) < URL_TTL);
        let connected = self
            .connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if waiting.len() + connected >= MAX_STREAMS {
            return None;
        }
        let token = crate::ids::random_hex(16).ok()?;
        waiting.insert(token.clone(), (sub, now));
        Some(token)
    }

    fn take(&self, token: &str) -> Option<Subscription> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (sub, at) = waiting.remove(token)?;
        (at.elapsed() < URL_TTL).then_some(sub)
    }

    /// Hands a backend's new changes to its subscribers.
    pub fn publish(
        &self,
        backend: &str,
        changes: &[ChangeRow],
        websocket_types: &dyn Fn(&str) -> bool,
    ) {
        let msgs: Vec<(&ChangeRow, String)> = changes
            .iter()
            .filter(|c| websocket_types(&c.kind))
            .map(|c| (c, message(c)))
            .collect();
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        connected.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if s.sub.backend != backend {
                return true;
            }
            // A subscriber that cannot keep up is dropped: its queue closes, then its socket.
            msgs.iter()
                .filter(|(c, _)| s.sub.wants(c))
                .all(|(_, text)| s.tx.try_send(text.clone()).is_ok())
        });
    }

    /// Whether any subscriber of `backend` is connected.
    pub fn has_subscribers(&self, backend: &str) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s.sub.backend == backend && !s.tx.is_closed())
    }

    /// Accepts stream connections on `listener` until `stop`, at most `max_connections` at once
    /// ([`MAX_CONNECTIONS`] in the server).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: tokio_util::sync::CancellationToken,
        max_connections: usize,
    ) {
        if let Ok(a) = listener.local_addr() {
            *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
        }
        // This listener is not behind the router's admission: it bounds its own connections,
        // handshakes that have not shown a token included (each waits at most 10 s).
        let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            // Past the bound, a connection is closed at once.
            let Ok(permit) = open.clone().try_acquire_owned() else {
                continue;
            };
            let (this, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                let _ = this.connection(tcp, stop).await;
                drop(permit);
            });
        }
    }

    async fn connection(
        &self,
        mut tcp: tokio::net::TcpStream,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        let _ = tcp.set_nodelay(true);
        // The handshake, read by hand: at most 8 KiB, within 10 s.
        let mut head = Vec::with_capacity(1024);
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await?;
                if n == 0 || head.len() + n > 8192 {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        if !matches!(read, Ok(Ok(()))) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("");
        let key = lines.find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        });
        let token = target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or("");
        let sub = self.take(token);
        let (Some(key), Some(sub)) = (key, sub) else {
            tcp.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        tcp.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber { sub, tx });
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10));
        let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, Some(config)).await;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(text) => {
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    // Dropped as too slow.
                    None => {
                        let _ = ws.close(None).await;
                        break;
                    }
                },
                frame = ws.next() => match frame {
                    // tungstenite echoes the client's Close with its code, and answers pings.
                    Some(Ok(Message::Close(_))) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = ping.tick() => {
                    if ws.send(Message::Ping("mar".into())).await.is_err() {
                        break;
                    }
                }
                _ = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: &str, receivers: Value) -> ChangeRow {
        ChangeRow {
            seq: 1,
            event: event.to_owned(),
            kind: "objects.todos".to_owned(),
            object: json!({"id": "x", "objectType": "objects.todos", "title": "t"}),
            receivers,
            request_id: Some("r".to_owned()),
            user_id: None,
        }
    }

    #[tokio::test]
    async fn connections_past_the_bound_are_closed_at_once() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(Arc::new(Streams::default()).serve(listener, stop.clone(), 2));
        // Two handshakes that never come hold both places.
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third connection was closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The held ones are still waiting for their handshake.
        let r = tokio::time::timeout(Duration::from_millis(300), held[0].read(&mut buf)).await;
        assert!(r.is_err(), "a held connection was closed: {r:?}");
        stop.cancel();
    }

    #[test]
    fn filters_and_readers_decide_who_hears_a_change() {
        let everyone = json!([{"id": "*", "objectType": "aclSubject"}]);
        let anon = |filter: Value| Subscription {
            backend: "b".into(),
            caller: Caller::Anonymous,
            filter,
        };
        assert!(anon(json!({})).wants(&change("create", everyone.clone())));
        assert!(anon(json!({"event": "create"})).wants(&change("create", everyone.clone())));
        assert!(!anon(json!({"event": "update"})).wants(&change("create", everyone.clone())));
        assert!(
            anon(json!({"data": {"objectType": "objects.todos"}}))
                .wants(&change("create", everyone.clone()))
        );
        assert!(
            !anon(json!({"data": {"objectType": "objects.other"}}))
                .wants(&change("create", everyone))
        );
        let private = json!([{"id": "000000000000000000000001", "objectType": "users"}]);
        assert!(!anon(json!({})).wants(&change("create", private.clone())));
        let master = Subscription {
            caller: Caller::Master,
            ..anon(json!({}))
        };
        assert!(master.wants(&change("create", private)));
        let m: Value = serde_json::from_str(&message(&change("delete", json!([])))).unwrap();
        assert_eq!(m["origin"]["apiRequestId"], "r");
        assert_eq!(m["event"], "delete");
    }
}
