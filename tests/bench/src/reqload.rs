//! An HTTP/1.1 keep-alive load generator whose requests differ one from the next (a new
//! object per POST, another id per GET) and whose answers are read (the ids the server gave):
//! the machinery of [`crate::loadgen`] (current-thread tokio runtimes, one request in flight
//! per connection, its response parser, a warm-up, then a measured window into a [`Hist`]),
//! with a [`Requests`] per connection that writes each request and sees each answer.
//!
//! The data-store benchmark (`eds-crud`) drives mini-MAR's EDS and Parse Server through it, so
//! both get the same client.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::loadgen::{HttpResult, Mark, parse_response, sleep_until};

/// One connection's requests.
pub trait Requests: Send + 'static {
    /// Writes the next request (head and body) into `buf`, which is empty.
    fn next(&mut self, buf: &mut Vec<u8>);
    /// Sees an answer: its status and body (chunked bodies are passed undecoded).
    fn answered(&mut self, status: u16, body: &[u8]);
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ReqLoad {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Concurrent keep-alive connections (each with one request in flight).
    pub conns: usize,
    /// Generator threads, each a current-thread runtime.
    pub threads: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Runs the load with one `make(connection index)` per connection; calls `mark` at the start
/// and the end of the measured window (from the calling thread). Returns the window's figures
/// and every connection's [`Requests`], which saw every answer, the warm-up's too.
pub fn run_requests<R: Requests>(
    load: &ReqLoad,
    make: impl Fn(usize) -> R + Send + Sync + Clone + 'static,
    mut mark: impl FnMut(Mark),
) -> (HttpResult, Vec<R>) {
    let threads = load.threads.max(1).min(load.conns.max(1));
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let mut handles = Vec::new();
    let mut first = 0;
    for t in 0..threads {
        let n = load.conns / threads + usize::from(t < load.conns % threads);
        let (addr, make, from) = (load.addr, make.clone(), first);
        first += n;
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let stats = Rc::new(RefCell::new(HttpResult::default()));
            let mut tasks = Vec::new();
            for i in from..from + n {
                let c = Conn {
                    addr,
                    stats: stats.clone(),
                    start,
                    end,
                };
                tasks.push(local.spawn_local(c.run(make(i))));
            }
            let reqs = local.block_on(&rt, async {
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            });
            let s = stats.borrow().clone();
            (s, reqs)
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
    let mut all = Vec::new();
    for h in handles {
        let (s, reqs) = h.join().unwrap();
        total.ok += s.ok;
        total.non2xx += s.non2xx;
        total.errors += s.errors;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
        total.hist.merge(&s.hist);
        all.extend(reqs);
    }
    (total, all)
}

struct Conn {
    addr: SocketAddr,
    stats: Rc<RefCell<HttpResult>>,
    start: Instant,
    end: Instant,
}

impl Conn {
    fn error(&self, e: &io::Error) {
        let mut s = self.stats.borrow_mut();
        s.errors += 1;
        if s.first_error.is_none() {
            s.first_error = Some(e.to_string());
        }
    }

    /// Requests until the window ends; gives the [`Requests`] back. A request in flight at
    /// the end is abandoned (its answer is not counted).
    async fn run<R: Requests>(self, mut reqs: R) -> R {
        let end = tokio::time::Instant::from_std(self.end);
        let _ = tokio::time::timeout_at(end, self.requests(&mut reqs)).await;
        reqs
    }

    async fn requests<R: Requests>(&self, reqs: &mut R) {
        let mut req = Vec::with_capacity(1024);
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let mut stream = match TcpStream::connect(self.addr).await {
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
                req.clear();
                reqs.next(&mut req);
                let sent = Instant::now();
                if let Err(e) = stream.write_all(&req).await {
                    self.error(&e);
                    break;
                }
                match read_answer(&mut stream, &mut buf, reqs).await {
                    Ok((status, close)) => {
                        let now = Instant::now();
                        if now >= self.start && now < self.end {
                            let mut s = self.stats.borrow_mut();
                            if (200..300).contains(&status) {
                                s.ok += 1;
                            } else {
                                s.non2xx += 1;
                            }
                            s.hist.record((now - sent).as_micros() as u64);
                        }
                        if close {
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
}

/// Reads one response, shows it to `reqs`, and keeps any bytes past it in `buf`.
async fn read_answer<R: Requests>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    reqs: &mut R,
) -> io::Result<(u16, bool)> {
    loop {
        let eof = if let Some(p) = parse_response(buf, false)? {
            Some(p)
        } else {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            if stream.read_buf(buf).await? == 0 {
                let p = parse_response(buf, true)?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a complete response",
                    )
                })?;
                Some(p)
            } else {
                None
            }
        };
        if let Some(p) = eof {
            let head_end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(p.len, |i| i + 4);
            reqs.answered(p.status, &buf[head_end.min(p.len)..p.len]);
            buf.drain(..p.len);
            return Ok((p.status, p.close));
        }
    }
}

/// One blocking HTTP/1.1 request on a fresh connection (for setting up, not for load):
/// status and body.
pub fn call(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let p = parse_response(&buf, true).ok()??;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((
        p.status,
        String::from_utf8_lossy(&buf[head_end..p.len]).into_owned(),
    ))
}

/// Percent-encodes `s` for a query string's value (everything but unreserved characters).
pub fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The string value of `"key":"…"` in a JSON text, found without parsing it (ids are plain
/// ASCII, so no escapes to undo).
pub fn json_str<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let at = body.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let len = body[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok()
}

/// A small, fast, seeded generator for picking ids (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_and_encodes_queries() {
        let body = br#"{"createdAt":"2026","id":"0123abcd","k":"x"}"#;
        assert_eq!(json_str(body, "id"), Some("0123abcd"));
        assert_eq!(json_str(body, "objectId"), None);
        assert_eq!(
            query_encode(r#"{"k":"a b"}"#),
            "%7B%22k%22%3A%22a%20b%22%7D"
        );
        let mut r = Rng::new(0);
        assert!((0..100).all(|_| r.below(7) < 7));
    }
}
