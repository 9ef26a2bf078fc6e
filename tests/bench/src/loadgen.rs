//! The HTTP/1.1 load generator: N connections (keep-alive, or a new connection per request
//! with `Connection: close`) on one or more current-thread tokio runtimes, a hand-written
//! response parser (Content-Length, chunked, until-close), a warm-up, then a measured window
//! in which every completed request's latency goes into a [`Hist`].
//!
//! Kept cheap on purpose: one prebuilt request buffer, one read buffer per connection, no
//! header allocation, so that on a 2-core machine the CPU goes to the proxy, not to us.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::hist::Hist;

/// Connections opened at once per generator thread (beyond the listen backlog the kernel
/// drops SYNs and the client waits a second to retry).
const CONNECT_CONCURRENCY: usize = 128;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct HttpLoad {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The request path.
    pub path: String,
    /// Concurrent connections (each with one request in flight).
    pub conns: usize,
    /// Send `Connection: close` and open a new connection for every request.
    pub close: bool,
    /// Generator threads, each a current-thread runtime.
    pub threads: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// The measured window's figures.
#[derive(Clone, Default)]
pub struct HttpResult {
    /// 2xx responses completed in the window.
    pub ok: u64,
    /// Other responses completed in the window.
    pub non2xx: u64,
    /// Connection, write, read or parse errors (warm-up and window).
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Latency of every response completed in the window (µs).
    pub hist: Hist,
    /// Length of the window (s).
    pub secs: f64,
}

impl HttpResult {
    /// 2xx responses per second in the window (others are errors, counted apart).
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    /// All responses in the window.
    pub fn responses(&self) -> u64 {
        self.ok + self.non2xx
    }

    fn merge(&mut self, o: &HttpResult) {
        self.ok += o.ok;
        self.non2xx += o.non2xx;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.hist.merge(&o.hist);
    }
}

/// The two instants a caller can hook (to take `/proc` snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The measured window begins (after the warm-up).
    Start,
    /// It ends.
    End,
}

/// The request as bytes.
pub fn request_bytes(host: &str, path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{conn}\r\n").into_bytes()
}

/// Runs the load; calls `mark` at the start and the end of the measured window (from the
/// calling thread, which otherwise sleeps).
pub fn run_http(load: &HttpLoad, mut mark: impl FnMut(Mark)) -> HttpResult {
    let threads = load.threads.max(1).min(load.conns.max(1));
    let t0 = Instant::now();
    let start = t0 + load.warmup;
    let end = start + load.duration;
    let req: Arc<[u8]> = request_bytes(&load.host, &load.path, load.close).into();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = load.conns / threads + usize::from(t < load.conns % threads);
        let (req, addr, close) = (req.clone(), load.addr, load.close);
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let stats = Rc::new(RefCell::new(HttpResult::default()));
            let sem = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
            let w = Window { start, end };
            for _ in 0..n {
                let c = Conn {
                    addr,
                    req: req.clone(),
                    stats: stats.clone(),
                    w,
                };
                if close {
                    local.spawn_local(c.closing());
                } else {
                    local.spawn_local(c.keepalive(sem.clone()));
                }
            }
            local.block_on(&rt, async {
                tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
            });
            let out = stats.borrow().clone();
            drop(local);
            out
        }));
    }
    sleep_until(start);
    mark(Mark::Start);
    sleep_until(end);
    mark(Mark::End);
    let mut total = HttpResult {
        secs: load.duration.as_secs_f64(),
        ..Default::default()
    };
    for h in handles {
        total.merge(&h.join().unwrap());
    }
    total
}

/// Sleeps the calling thread until `t`.
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

struct Conn {
    addr: SocketAddr,
    req: Arc<[u8]>,
    stats: Rc<RefCell<HttpResult>>,
    w: Window,
}

impl Conn {
    fn done(&self, sent: Instant, status: u16) {
        let now = Instant::now();
        if now >= self.w.start && now < self.w.end {
            let mut s = self.stats.borrow_mut();
            if (200..300).contains(&status) {
                s.ok += 1;
            } else {
                s.non2xx += 1;
            }
            s.hist.record((now - sent).as_micros() as u64);
        }
    }

    fn error(&self, e: &io::Error) {
        if Instant::now() < self.w.end {
            let mut s = self.stats.borrow_mut();
            s.errors += 1;
            if s.first_error.is_none() {
                s.first_error = Some(e.to_string());
            }
        }
    }

    async fn keepalive(self, sem: Rc<Semaphore>) {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let conn = {
                let _permit = sem.acquire().await;
                TcpStream::connect(self.addr).await
            };
            let mut stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    self.error(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            buf.clear();
            loop {
                let sent = Instant::now();
                if let Err(e) = stream.write_all(&self.req).await {
                    self.error(&e);
                    break;
                }
                match read_response(&mut stream, &mut buf).await {
                    Ok(r) => {
                        self.done(sent, r.status);
                        if r.close {
                            break;
                        }
                    }
                    Err(e) => {
                        self.error(&e);
                        break;
                    }
                }
            }
        }
    }

    async fn closing(self) {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let sent = Instant::now();
            buf.clear();
            let res = async {
                let mut s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                s.write_all(&self.req).await?;
                read_response(&mut s, &mut buf).await
            }
            .await;
            match res {
                Ok(r) => self.done(sent, r.status),
                Err(e) => {
                    self.error(&e);
                    // EADDRNOTAVAIL and friends: do not spin.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Status code.
    pub status: u16,
    /// Bytes of head and body.
    pub len: usize,
    /// The server will close the connection.
    pub close: bool,
}

/// Reads one response from `stream`, using and refilling `buf` (which keeps any bytes past
/// the response for the next call).
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Parsed> {
    loop {
        if let Some(r) = parse_response(buf, false)? {
            buf.drain(..r.len);
            return Ok(r);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(buf).await? == 0 {
            return match parse_response(buf, true)? {
                Some(r) => {
                    buf.clear();
                    Ok(r)
                }
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response",
                )),
            };
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parses a complete response at the start of `buf`: `Ok(None)` if more bytes are needed.
/// `eof` says the connection is closed, which completes a body delimited by the close.
pub fn parse_response(buf: &[u8], eof: bool) -> io::Result<Option<Parsed>> {
    let Some(head_end) = find(buf, b"\r\n\r\n", 0) else {
        if buf.len() > 64 * 1024 {
            return Err(bad("response head too large"));
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let http10 = head[7] == b'0';
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| bad("bad content-length"))?;
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let body_start = head_end + 4;
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let len = if no_body {
        Some(body_start)
    } else if chunked {
        chunked_end(buf, body_start)?
    } else if let Some(n) = length {
        (buf.len() >= body_start + n).then_some(body_start + n)
    } else {
        // Delimited by the close.
        close = true;
        eof.then_some(buf.len())
    };
    Ok(len.map(|len| Parsed { status, len, close }))
}

/// Where a chunked body starting at `pos` ends (after the last CRLF), if complete.
fn chunked_end(buf: &[u8], mut pos: usize) -> io::Result<Option<usize>> {
    loop {
        let Some(eol) = find(buf, b"\r\n", pos) else {
            return Ok(None);
        };
        let size_text = &buf[pos..eol];
        let size_text = size_text
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("bad chunk size"))?;
        pos = eol + 2;
        if size == 0 {
            // Trailers (usually none) end with an empty line.
            if buf.len() >= pos + 2 && &buf[pos..pos + 2] == b"\r\n" {
                return Ok(Some(pos + 2));
            }
            return Ok(find(buf, b"\r\n\r\n", pos).map(|p| p + 4));
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        let p = parse_response(r, false).unwrap().unwrap();
        assert_eq!((p.status, p.len, p.close), (200, 43, false));
        assert_eq!(parse_response(&r[..40], false).unwrap(), None);
    }

    #[test]
    fn chunked_and_close() {
        let r = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let p = parse_response(r, false).unwrap().unwrap();
        assert_eq!((p.status, p.len, p.close), (404, r.len(), true));
        assert_eq!(parse_response(&r[..r.len() - 1], false).unwrap(), None);
    }

    #[test]
    fn until_close() {
        let r = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert_eq!(parse_response(r, true).unwrap().unwrap().len, r.len());
    }
}
