//! Router tests over real sockets: a router on 127.0.0.1:0 (with or without the fast path),
//! apps that are real listeners misbehaving in chosen ways, a raw HTTP/1.1 client, and the
//! access log lines the router writes, captured. `parity.rs` sends one table of requests down
//! both paths; `in_process.rs` proves in-process targets get what apps behind ports get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod booting;
mod in_process;
mod parity;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{
    Body, Handler, InProcessTarget, Metrics, Proxy, ResponseFuture, RouteTable, ServerLimits,
    Timeouts,
};

/// Timeouts short enough for tests to see them pass.
pub fn short_timeouts() -> Timeouts {
    Timeouts {
        first_byte: Duration::from_millis(400),
        response_idle: Duration::from_millis(700),
        connect: Duration::from_secs(1),
        boot_wait: Duration::from_millis(700),
    }
}

/// The platform of a test router: answers 200 `platform`.
struct Platform;

impl Handler for Platform {
    fn call(&self, _: http::Request<Body>) -> ResponseFuture {
        Box::pin(async { http::Response::new(crate::full("platform")) })
    }
}

/// A router serving `localhost`, its access log captured.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub table: Arc<RouteTable>,
    pub metrics: Arc<Metrics>,
    lines: Arc<Mutex<Vec<(String, String)>>>,
    shutdown: CancellationToken,
}

impl TestRouter {
    pub async fn start(fast_path: bool, timeouts: Timeouts) -> Self {
        Self::start_admitting(fast_path, timeouts, crate::Admission::unlimited()).await
    }

    /// A router whose connections are admitted by `admission`.
    pub async fn start_admitting(
        fast_path: bool,
        timeouts: Timeouts,
        admission: Arc<crate::Admission>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(RouteTable::new("localhost"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let captured = lines.clone();
        let sink: crate::LogSink = Arc::new(move |app, line| {
            captured.lock().unwrap().push((app.to_string(), line));
        });
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let proxy = Arc::new(Proxy::new(
            table.clone(),
            InProcessTarget::new("platform", Arc::new(Platform)).patient(),
            Some(sink),
            metrics.clone(),
            shutdown.clone(),
            timeouts,
        ));
        let limits = ServerLimits {
            fast_path,
            ..ServerLimits::default()
        };
        tokio::spawn(crate::serve(
            listener,
            proxy,
            shutdown.clone(),
            Duration::from_secs(1),
            limits,
            None,
            admission,
        ));
        Self {
            addr,
            table,
            metrics,
            lines,
            shutdown,
        }
    }

    /// The access log line of the request with id `rid`, waiting for it a bounded time (lines
    /// are written when a response ends, which may be after the client read it).
    pub async fn line(&self, rid: &str) -> Option<(String, String)> {
        for _ in 0..100 {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(&format!("request_id={rid} ")))
                .cloned();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A raw answer: status and the bytes after the head.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Sends `raw` on a new connection and reads everything until the router closes it (requests
/// say `Connection: close`), for at most 10 s.
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_answer(&mut s).await
}

/// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all this host's).
pub async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads a whole answer from `s` until EOF.
pub async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head,
        body: out[end..].to_vec(),
    }
}

/// Reads one request head from an app's connection; `None` at EOF.
pub async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The value of header `name` in a raw head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An app listening on 127.0.0.1:0 that treats every connection with `serve`.
pub async fn app<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A line with the fields that differ between two runs of the same request removed.
pub fn normalized(line: &str) -> String {
    line.split(' ')
        .filter(|f| !f.starts_with("service=") && !f.starts_with("connect="))
        .collect::<Vec<_>>()
        .join(" ")
}
