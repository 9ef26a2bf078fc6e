//! The WebSocket load generator: M client connections (hand-written handshake and masked
//! binary frames, so the client stays cheap) through a proxy to an echo server, in three modes:
//! paced (one message per connection every X ms, round-trip latency of each), burst (K messages
//! per connection as fast as possible) and idle (hold the connections, then check each still
//! echoes). Every message carries its sequence number and send time, so losses are counted.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::Semaphore;

use crate::hist::Hist;

/// Handshakes in flight at once per generator thread.
const CONNECT_CONCURRENCY: usize = 128;

/// Where the WebSocket endpoint is.
#[derive(Debug, Clone)]
pub struct WsTarget {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The request path.
    pub path: String,
}

/// What each connection does once all are open.
#[derive(Debug, Clone, Copy)]
pub enum WsMode {
    /// One message every `interval` for `warmup + duration`; the window is the last `duration`.
    Paced {
        /// Between two messages of one connection.
        interval: Duration,
        /// Before the window.
        warmup: Duration,
        /// The window.
        duration: Duration,
    },
    /// `count` messages as fast as possible, then wait up to `timeout` for their echoes.
    Burst {
        /// Messages per connection.
        count: u64,
        /// Give up waiting for echoes after this.
        timeout: Duration,
    },
    /// Nothing until the caller's `Connected` hook returns, then one message each.
    Idle,
}

/// A WebSocket load.
#[derive(Debug, Clone)]
pub struct WsLoad {
    /// The endpoint.
    pub target: WsTarget,
    /// Connections.
    pub conns: usize,
    /// Generator threads.
    pub threads: usize,
    /// Message size in bytes (at least 16).
    pub size: usize,
    /// What to do.
    pub mode: WsMode,
}

/// Figures of one run.
#[derive(Clone, Default)]
pub struct WsResult {
    /// Connections opened.
    pub connected: u64,
    /// Connections that failed to open.
    pub connect_failed: u64,
    /// The first connection or I/O error.
    pub first_error: Option<String>,
    /// Connections that broke after opening.
    pub broken: u64,
    /// Messages sent (whole run).
    pub sent: u64,
    /// Echoes received (whole run).
    pub received: u64,
    /// Distinct messages echoed (by sequence number, per connection): what was not lost.
    pub distinct: u64,
    /// Echoes of a message already echoed (by sequence number): duplicates.
    pub duplicated: u64,
    /// Echoes received inside the measured window.
    pub window_received: u64,
    /// Round trips of the messages sent in the window (burst: all), µs.
    pub hist: Hist,
    /// Length of the measured window (paced: `duration`; burst: first send to last echo).
    pub secs: f64,
}

impl WsResult {
    /// Messages sent and never echoed, by sequence number (a duplicate does not hide a loss).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.distinct)
    }

    /// Echoed messages per second in the window.
    pub fn rate(&self) -> f64 {
        self.window_received as f64 / self.secs.max(1e-9)
    }

    fn merge(&mut self, o: &WsResult) {
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.broken += o.broken;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.sent += o.sent;
        self.received += o.received;
        self.distinct += o.distinct;
        self.duplicated += o.duplicated;
        self.window_received += o.window_received;
        self.hist.merge(&o.hist);
    }
}

/// The instants a caller can hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMark {
    /// Every connection is open (or failed); nothing is being sent. The load waits for the
    /// hook to return (measure idle memory here).
    Connected,
    /// The measured window begins.
    Start,
    /// It ends (burst and idle: every connection finished).
    End,
}

#[derive(Clone, Copy)]
struct Plan {
    go: Instant,
    start: Instant,
    end: Instant,
}

struct Shared {
    opened: AtomicUsize,
    finished: AtomicUsize,
    last_echo_ns: std::sync::atomic::AtomicU64,
    go: tokio::sync::watch::Sender<Option<Plan>>,
    epoch: Instant,
}

/// Runs the load; calls `mark` from the calling thread.
pub fn run_ws(load: &WsLoad, mut mark: impl FnMut(WsMark)) -> WsResult {
    let threads = load.threads.max(1).min(load.conns.max(1));
    let (go, _) = tokio::sync::watch::channel(None);
    let shared = Arc::new(Shared {
        opened: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        last_echo_ns: Default::default(),
        go,
        epoch: Instant::now(),
    });
    let mut handles = Vec::new();
    let mut index = 0;
    for t in 0..threads {
        let n = load.conns / threads + usize::from(t < load.conns % threads);
        let (shared, load2) = (shared.clone(), load.clone());
        let first = index;
        index += n;
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            let stats = Rc::new(RefCell::new(WsResult::default()));
            let sem = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
            let load2 = Rc::new(load2);
            for i in first..first + n {
                local.spawn_local(conn(
                    i,
                    load2.clone(),
                    shared.clone(),
                    stats.clone(),
                    sem.clone(),
                ));
            }
            local.block_on(&rt, async {
                while Rc::strong_count(&stats) > 1 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            stats.borrow().clone()
        }));
    }
    while shared.opened.load(Ordering::Acquire) < load.conns {
        std::thread::sleep(Duration::from_millis(5));
    }
    mark(WsMark::Connected);
    let go = Instant::now();
    let plan = match load.mode {
        WsMode::Paced {
            warmup, duration, ..
        } => Plan {
            go,
            start: go + warmup,
            end: go + warmup + duration,
        },
        WsMode::Burst { timeout, .. } => Plan {
            go,
            start: go,
            end: go + timeout,
        },
        WsMode::Idle => Plan {
            go,
            start: go,
            end: go + Duration::from_secs(10),
        },
    };
    let secs = if let WsMode::Paced { .. } = load.mode {
        shared.go.send_replace(Some(plan));
        crate::loadgen::sleep_until(plan.start);
        mark(WsMark::Start);
        crate::loadgen::sleep_until(plan.end);
        mark(WsMark::End);
        (plan.end - plan.start).as_secs_f64()
    } else {
        mark(WsMark::Start);
        shared.go.send_replace(Some(plan));
        while shared.finished.load(Ordering::Acquire) < load.conns {
            std::thread::sleep(Duration::from_millis(2));
        }
        mark(WsMark::End);
        let last = shared.last_echo_ns.load(Ordering::Acquire);
        let go_ns = (go - shared.epoch).as_nanos() as u64;
        last.saturating_sub(go_ns) as f64 / 1e9
    };
    let mut total = WsResult {
        secs,
        ..Default::default()
    };
    for h in handles {
        total.merge(&h.join().unwrap());
    }
    total
}

async fn conn(
    i: usize,
    load: Rc<WsLoad>,
    shared: Arc<Shared>,
    stats: Rc<RefCell<WsResult>>,
    sem: Rc<Semaphore>,
) {
    let opened = {
        let _permit = sem.acquire().await;
        connect(&load.target).await
    };
    let mut go = shared.go.subscribe();
    shared.opened.fetch_add(1, Ordering::AcqRel);
    let (mut stream, buf) = match opened {
        Ok(x) => {
            stats.borrow_mut().connected += 1;
            x
        }
        Err(e) => {
            {
                let mut s = stats.borrow_mut();
                s.connect_failed += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(format!("connect: {e}"));
                }
            }
            let _ = go.wait_for(Option::is_some).await;
            shared.finished.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    let plan = go
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|p| *p)
        .unwrap();
    let c = ConnState {
        load: &load,
        shared: &shared,
        plan,
        sent: Cell::new(0),
        writer_done: Cell::new(false),
        received: Cell::new(0),
        seen: RefCell::new(Vec::new()),
        distinct: Cell::new(0),
        duplicated: Cell::new(0),
        window_received: Cell::new(0),
        hist: RefCell::new(Hist::new()),
        error: RefCell::new(None),
    };
    let (rd, wr) = stream.split();
    let (paced_interval, count) = match load.mode {
        WsMode::Paced { interval, .. } => (Some(interval), u64::MAX),
        WsMode::Burst { count, .. } => (None, count),
        WsMode::Idle => (None, 1),
    };
    let offset = paced_interval
        .map(|iv| iv.mul_f64(i as f64 / load.conns.max(1) as f64))
        .unwrap_or_default();
    let _ = tokio::join!(
        c.writer(wr, paced_interval, offset, count),
        c.reader(rd, buf)
    );
    shared.finished.fetch_add(1, Ordering::AcqRel);
    let mut s = stats.borrow_mut();
    s.sent += c.sent.get();
    s.received += c.received.get();
    s.distinct += c.distinct.get();
    s.duplicated += c.duplicated.get();
    s.window_received += c.window_received.get();
    s.hist.merge(&c.hist.borrow());
    if let Some(e) = c.error.take() {
        s.broken += 1;
        if s.first_error.is_none() {
            s.first_error = Some(e);
        }
    }
}

struct ConnState<'a> {
    load: &'a WsLoad,
    shared: &'a Shared,
    plan: Plan,
    sent: Cell<u64>,
    writer_done: Cell<bool>,
    received: Cell<u64>,
    /// Sequence numbers echoed so far, one bit each.
    seen: RefCell<Vec<u64>>,
    distinct: Cell<u64>,
    duplicated: Cell<u64>,
    window_received: Cell<u64>,
    hist: RefCell<Hist>,
    error: RefCell<Option<String>>,
}

impl ConnState<'_> {
    fn now_ns(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    /// Counts an echo of message `seq`: new, or a duplicate.
    fn note_seq(&self, seq: u64) {
        let mut seen = self.seen.borrow_mut();
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & bit != 0 {
            self.duplicated.set(self.duplicated.get() + 1);
        } else {
            seen[word] |= bit;
            self.distinct.set(self.distinct.get() + 1);
        }
    }

    fn fail(&self, what: &str, e: &io::Error) {
        let mut err = self.error.borrow_mut();
        if err.is_none() {
            *err = Some(format!("{what}: {e}"));
        }
    }

    async fn writer(
        &self,
        mut wr: WriteHalf<'_>,
        interval: Option<Duration>,
        offset: Duration,
        count: u64,
    ) {
        let mut frame = Vec::with_capacity(self.load.size + 14);
        let mut next = self.plan.go + offset;
        let mut seq = 0u64;
        while seq < count {
            if let Some(iv) = interval {
                if next >= self.plan.end {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
                next += iv;
            }
            if self.error.borrow().is_some() {
                break;
            }
            frame.clear();
            encode_frame(&mut frame, seq, self.now_ns(), self.load.size);
            if let Err(e) = wr.write_all(&frame).await {
                self.fail("write", &e);
                break;
            }
            self.sent.set(self.sent.get() + 1);
            seq += 1;
        }
        self.writer_done.set(true);
    }

    async fn reader(&self, mut rd: ReadHalf<'_>, mut buf: Vec<u8>) {
        let drain = match self.load.mode {
            WsMode::Paced { .. } => Duration::from_secs(5),
            _ => Duration::ZERO,
        };
        let deadline = tokio::time::Instant::from_std(self.plan.end + drain);
        let start_ns = (self.plan.start - self.shared.epoch).as_nanos() as u64;
        let end_ns = (self.plan.end - self.shared.epoch).as_nanos() as u64;
        let mut pos = 0;
        loop {
            while let Some((opcode, payload, total)) = decode_frame(&buf[pos..]) {
                let p = &buf[pos + payload.start..pos + payload.end];
                pos += total;
                match opcode {
                    0x1 | 0x2 if p.len() >= 16 => {
                        let seq = u64::from_le_bytes(p[0..8].try_into().unwrap());
                        let sent_ns = u64::from_le_bytes(p[8..16].try_into().unwrap());
                        let now = self.now_ns();
                        self.received.set(self.received.get() + 1);
                        self.note_seq(seq);
                        let in_window = now >= start_ns && now < end_ns;
                        if in_window {
                            self.window_received.set(self.window_received.get() + 1);
                        }
                        let record = match self.load.mode {
                            WsMode::Paced { .. } => sent_ns >= start_ns && sent_ns < end_ns,
                            _ => true,
                        };
                        if record {
                            self.hist
                                .borrow_mut()
                                .record(now.saturating_sub(sent_ns) / 1000);
                        }
                        self.shared.last_echo_ns.fetch_max(now, Ordering::AcqRel);
                    }
                    0x8 => {
                        self.fail("read", &io::Error::other("close frame from the server"));
                        return;
                    }
                    _ => {}
                }
            }
            buf.drain(..pos);
            pos = 0;
            if self.writer_done.get() && self.distinct.get() >= self.sent.get() {
                return;
            }
            if self.error.borrow().is_some() {
                return;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(0)) => {
                    self.fail("read", &io::Error::from(io::ErrorKind::UnexpectedEof));
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.fail("read", &e);
                    return;
                }
            }
        }
    }
}

/// Opens a WebSocket: TCP connect, the upgrade request, a `101`. Returns the stream and any
/// bytes read past the handshake.
pub async fn connect(t: &WsTarget) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(t.addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        t.path, t.host
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let eol = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(end);
                let line = String::from_utf8_lossy(&buf[..eol.min(80)]).into_owned();
                return Err(io::Error::other(format!("handshake refused: {line}")));
            }
            buf.drain(..end + 4);
            return Ok((s, buf));
        }
        if buf.len() > 16 * 1024 || s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
}

/// Appends a masked binary frame of `size` bytes: sequence number, send time (ns), padding.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, sent_ns: u64, size: usize) {
    let size = size.max(16);
    out.push(0x82);
    if size < 126 {
        out.push(0x80 | size as u8);
    } else if size <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(size as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.resize(start + size, b'x');
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Decodes one frame at the start of `buf`: opcode, payload range, total length. A masked
/// frame (servers do not send them) has its payload returned still masked.
pub fn decode_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut hdr) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    if masked {
        hdr += 4;
    }
    let total = hdr + usize::try_from(len).ok()?;
    (buf.len() >= total).then_some((opcode, hdr..total, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut f = Vec::new();
        encode_frame(&mut f, 7, 99, 100);
        assert_eq!(f.len(), 106);
        let (op, range, total) = decode_frame(&f).unwrap();
        assert_eq!((op, total), (2, 106));
        let mask = [f[2], f[3], f[4], f[5]];
        let p: Vec<u8> = f[range]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 7);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 99);
        assert!(decode_frame(&f[..105]).is_none());
    }
}
