//! The push-gateway load generator of `mws-fanout`: N WebSocket clients of one gateway and a
//! publisher, against mini-MAR's MWS or the Node reference (both speak the same REST shape).
//!
//! - **Sockets**: each is reserved through the REST API (`POST sockets`, with its tag), then
//!   opened with its single-use token from a source address of its own range (127.0.0.2 and
//!   up, `per_address` sockets each, the client socket bound before it connects), so caps per
//!   client address and the 28k ephemeral ports of one address do not bound the test. Sockets
//!   are read on `threads` current-thread runtimes, many sockets per task (a task drives a
//!   group of them), with a hand-written frame parser, so the client stays cheap: on this
//!   2-core machine every µs it spends is taken from the server under test.
//! - **Messages**: every message's `data` carries its number and its send time (ns since the
//!   run's epoch, taken just before the POST is written), padded to `size` bytes, so each
//!   delivery's latency is exact, and each socket keeps a bitset of the numbers it got, so
//!   losses and duplicates are counted, not guessed.
//! - **Publisher**: `POST messages` over `publishers` keep-alive connections with up to
//!   `pipeline` requests in flight on each. Saturating modes are windowed: message k+window is
//!   posted only once every reading socket received message k, so no socket's queue holds
//!   more than `window` messages (MWS cuts a socket whose queue of 256 is full: an unwindowed
//!   publisher would measure that rule, not the fan-out).
//! - **Recovery**: sockets can drop (the TCP connection closed without a Close) and come back
//!   after a while on a fresh reservation with `since=N&epoch=E`, the last envelope seen.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::hist::Hist;
use crate::wsload::decode_frame;

/// Handshakes (with their reservations) in flight at once per generator thread.
const CONNECT_CONCURRENCY: usize = 64;
/// Sockets one task drives.
const GROUP: usize = 64;
/// Slots of the delivery counters of windowed modes (more than any window).
const RING: usize = 1 << 14;
/// The smallest message: number, send time, two spaces.
pub const MIN_SIZE: usize = 34;

/// A gateway's REST and WebSocket endpoint.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The Host header (mini-MAR: the platform's host, `localhost`).
    pub host: String,
    /// The gateway's id, in its paths.
    pub id: String,
    /// Its secret, sent as `Authorization: Bearer`.
    pub secret: String,
}

impl Gateway {
    /// `/v1/gateways/ID/RESOURCE`.
    pub fn path(&self, resource: &str) -> String {
        format!("/v1/gateways/{}/{resource}", self.id)
    }

    /// The bytes of one REST request with the secret and a JSON body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.secret,
            body.len()
        )
        .into_bytes()
    }
}

/// One keep-alive HTTP/1.1 connection for REST calls, one at a time.
pub struct Rest {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Rest {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `req` and reads the answer: status and body (Content-Length framed).
    pub async fn call(&mut self, req: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(req).await?;
        read_answer(&mut self.stream, &mut self.buf).await
    }
}

/// Reads one response from `stream` (keeping bytes past it in `buf`): status and body.
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<(u16, Vec<u8>)> {
    loop {
        if let Some(p) = crate::loadgen::parse_response(buf, false)? {
            let head = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(p.len, |h| h + 4);
            let body = buf[head..p.len].to_vec();
            buf.drain(..p.len);
            return Ok((p.status, body));
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8192);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
}

/// One REST call on a fresh connection, from a blocking context (setup and checks).
pub fn call_blocking(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rest = Rest::open(gw.addr).await?;
        let (status, body) = rest.call(&gw.request(method, path, body)).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// The `data` of message `seq`: its number, its send time, padding to `size` bytes.
pub fn message(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("{seq:016} {sent_ns:016} ");
    let size = size.max(MIN_SIZE);
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The number and send time of a message's `data`.
pub fn parse_message(data: &[u8]) -> Option<(u64, u64)> {
    fn digits(d: &[u8]) -> Option<u64> {
        d.iter().try_fold(0u64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
        })
    }
    Some((digits(data.get(..16)?)?, digits(data.get(17..33)?)?))
}

/// What the publisher does.
#[derive(Debug, Clone, Copy)]
pub enum Publish {
    /// Messages to every socket (`receivers.sockets ["*"]`) as fast as the window allows:
    /// message k+`window` is posted once every reading socket got message k.
    Saturate {
        /// Messages not yet delivered everywhere, at most.
        window: usize,
    },
    /// Messages to one tag each (`receivers.tags`), the tags in turn, windowed likewise.
    Tags {
        /// Messages not yet delivered everywhere, at most.
        window: usize,
    },
    /// One message to every socket every `interval`.
    Paced {
        /// Between two messages.
        interval: Duration,
    },
    /// One message to one tag every `interval`, the tags in turn: deliveries spread evenly
    /// over time, as when each client gets its own messages.
    PacedTags {
        /// Between two messages.
        interval: Duration,
    },
    /// Nothing during the window; one message to every socket at its end, to check that
    /// every socket still receives.
    Idle,
}

/// Sockets that drop and come back (`since=N&epoch=E`).
#[derive(Debug, Clone, Copy)]
pub struct Drops {
    /// How many (spread over the sockets).
    pub sockets: usize,
    /// When, after the window starts.
    pub after: Duration,
    /// How long they stay away.
    pub away: Duration,
}

/// A gateway load.
#[derive(Debug, Clone)]
pub struct MwsLoad {
    /// The gateway.
    pub gateway: Gateway,
    /// Sockets.
    pub sockets: usize,
    /// Tags: socket i gets tag `t{i % tags}`; 0 for untagged sockets.
    pub tags: usize,
    /// Sockets that never read (spread over the sockets): slow consumers.
    pub silent: usize,
    /// Their receive buffer (`SO_RCVBUF`), to reach the gateway's bound sooner.
    pub silent_rcvbuf: Option<u32>,
    /// Where the silent sockets' local addresses go once open (to find their connections'
    /// queues in `/proc/net/tcp`).
    pub silent_addrs: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
    /// Ask for `{seq, epoch, data}` envelopes (`envelope=1`).
    pub envelope: bool,
    /// Sockets per source address (0: all from 127.0.0.1, unbound).
    pub per_address: usize,
    /// Generator threads (thread 0 also publishes).
    pub threads: usize,
    /// The publisher's mode.
    pub publish: Publish,
    /// Message size in bytes (at least [`MIN_SIZE`]).
    pub size: usize,
    /// Publishing connections.
    pub publishers: usize,
    /// Requests in flight per publishing connection.
    pub pipeline: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// After the window, how long to wait for the deliveries still on their way.
    pub drain: Duration,
    /// Sockets that drop and come back.
    pub drops: Option<Drops>,
}

/// Figures of one run.
#[derive(Clone, Default)]
pub struct MwsResult {
    /// Sockets opened.
    pub connected: u64,
    /// Sockets that failed to open.
    pub connect_failed: u64,
    /// How long opening every socket took (s).
    pub connect_secs: f64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Reading sockets that ended before the run did (a Close or an error).
    pub broken: u64,
    /// Messages posted.
    pub published: u64,
    /// Posts answered 201.
    pub publish_ok: u64,
    /// Posts answered otherwise, or lost with their connection.
    pub publish_failed: u64,
    /// Posts answered 201 inside the window.
    pub window_acked: u64,
    /// Deliveries owed: each posted message times the reading sockets it was for.
    pub expected: u64,
    /// Distinct deliveries (by message number, per socket).
    pub distinct: u64,
    /// Deliveries of a message a socket already had.
    pub duplicated: u64,
    /// Deliveries inside the window.
    pub window_deliveries: u64,
    /// Latency (post to delivery) of the messages posted in the window, µs.
    pub hist: Hist,
    /// The window's length (s).
    pub secs: f64,
    /// Close codes received, by code (1006: the connection ended without one).
    pub closes: BTreeMap<u16, u64>,
    /// Frames the silent sockets had received when they finally read.
    pub silent_frames: u64,
    /// How the silent sockets' backlogs ended, by Close code (1006: the connection ended
    /// without one).
    pub silent_closes: BTreeMap<u16, u64>,
    /// Reconnections whose status frame said `recovered: true`.
    pub recovered: u64,
    /// Reconnections told to resync (`recovered: false`).
    pub gaps: u64,
    /// Reconnections that failed to open.
    pub reconnect_failed: u64,
    /// Messages replayed to reconnecting sockets.
    pub replayed: u64,
    /// Longest time from a drop to the socket's first frame after it came back (ms).
    pub max_back_ms: f64,
}

impl MwsResult {
    /// Deliveries owed and never made.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.distinct)
    }

    /// Deliveries per second in the window.
    pub fn rate(&self) -> f64 {
        self.window_deliveries as f64 / self.secs.max(1e-9)
    }

    /// Posts answered 201 per second in the window.
    pub fn publish_rate(&self) -> f64 {
        self.window_acked as f64 / self.secs.max(1e-9)
    }

    fn merge(&mut self, o: &MwsResult) {
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.broken += o.broken;
        self.published += o.published;
        self.publish_ok += o.publish_ok;
        self.publish_failed += o.publish_failed;
        self.window_acked += o.window_acked;
        self.distinct += o.distinct;
        self.duplicated += o.duplicated;
        self.window_deliveries += o.window_deliveries;
        self.hist.merge(&o.hist);
        for (k, v) in &o.closes {
            *self.closes.entry(*k).or_default() += v;
        }
        self.silent_frames += o.silent_frames;
        for (k, v) in &o.silent_closes {
            *self.silent_closes.entry(*k).or_default() += v;
        }
        self.recovered += o.recovered;
        self.gaps += o.gaps;
        self.reconnect_failed += o.reconnect_failed;
        self.replayed += o.replayed;
        self.max_back_ms = self.max_back_ms.max(o.max_back_ms);
    }

    fn error(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// The instants a caller can hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Every socket is open (or failed); nothing is published yet. The load waits for the
    /// hook to return (measure idle memory here).
    Connected,
    /// The measured window begins.
    Start,
    /// It ends.
    End,
    /// The deliveries still on their way arrived (or the drain timed out); the sockets close
    /// next.
    Drained,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    go: Instant,
    start: Instant,
    end: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Wait,
    Go(Plan),
    Stop,
}

/// Delivery counter of one message in flight (windowed modes).
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    got: AtomicU32,
    want: AtomicU32,
}

struct Shared {
    epoch: Instant,
    phase: watch::Sender<Phase>,
    opened: AtomicUsize,
    /// Reading sockets open, in all and per tag.
    readers: AtomicU32,
    tag_readers: Box<[AtomicU32]>,
    slots: Box<[Slot]>,
    /// The window, in messages: taken by a post, given back by its last delivery.
    credits: Semaphore,
    gated: bool,
    expected: AtomicU64,
    distinct: AtomicU64,
    publisher_done: AtomicBool,
    /// First source address of this run (index into 127.0.0.2..=127.0.0.254).
    first_addr: u32,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Counts a first delivery of `seq`; gives a window credit back when it was the last one
    /// the message was waiting for.
    fn delivered(&self, seq: u64) {
        self.distinct.fetch_add(1, Ordering::Relaxed);
        if !self.gated {
            return;
        }
        let slot = &self.slots[seq as usize % RING];
        if slot.seq.load(Ordering::Acquire) != seq {
            return;
        }
        let got = slot.got.fetch_add(1, Ordering::AcqRel) + 1;
        if got == slot.want.load(Ordering::Acquire) {
            self.credits.add_permits(1);
        }
    }
}

/// Source addresses handed out so far, so consecutive runs use fresh ones (the previous
/// run's ports sit in TIME_WAIT on its addresses for a minute).
static NEXT_ADDR: AtomicU32 = AtomicU32::new(0);

/// 127.0.0.2 ..= 127.0.0.254.
const ADDRS: u32 = 253;

fn source(first: u32, i: usize, per: usize) -> Option<Ipv4Addr> {
    if per == 0 {
        return None;
    }
    let k = (first + (i / per) as u32) % ADDRS;
    Some(Ipv4Addr::new(127, 0, 0, 2 + k as u8))
}

/// Whether socket `i` of `n` is one of `k` spread evenly, at `offset` (0 or 1) within its
/// stride, so two kinds chosen with different offsets never overlap.
fn chosen(i: usize, n: usize, k: usize, offset: usize) -> bool {
    if k == 0 || n == 0 {
        return false;
    }
    let stride = (n / k).max(1);
    i % stride == offset.min(stride - 1) && i / stride < k
}

/// Runs the load; calls `mark` from the calling thread.
pub fn run_mws(load: &MwsLoad, mut mark: impl FnMut(Mark)) -> MwsResult {
    let n = load.sockets;
    let threads = load.threads.max(1).min(n.max(1));
    let (gated, window) = match load.publish {
        Publish::Saturate { window } | Publish::Tags { window } => {
            (true, window.clamp(1, RING / 2))
        }
        _ => (false, 0),
    };
    let per = load.per_address;
    let addrs = if per == 0 { 0 } else { n.div_ceil(per) as u32 };
    let (phase, _) = watch::channel(Phase::Wait);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phase,
        opened: AtomicUsize::new(0),
        readers: AtomicU32::new(0),
        tag_readers: (0..load.tags.max(1)).map(|_| AtomicU32::new(0)).collect(),
        slots: (0..if gated { RING } else { 0 })
            .map(|_| Slot::default())
            .collect(),
        credits: Semaphore::new(window),
        gated,
        expected: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
        publisher_done: AtomicBool::new(false),
        first_addr: NEXT_ADDR.fetch_add(addrs, Ordering::Relaxed),
    });
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (shared, load) = (shared.clone(), Arc::new(load.clone()));
        handles.push(std::thread::spawn(move || {
            generator(t, threads, load, shared)
        }));
    }
    while shared.opened.load(Ordering::Acquire) < n {
        std::thread::sleep(Duration::from_millis(5));
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    mark(Mark::Connected);
    let go = Instant::now();
    let plan = Plan {
        go,
        start: go + load.warmup,
        end: go + load.warmup + load.duration,
    };
    shared.phase.send_replace(Phase::Go(plan));
    crate::loadgen::sleep_until(plan.start);
    mark(Mark::Start);
    crate::loadgen::sleep_until(plan.end);
    mark(Mark::End);
    // The window is over: what is still on its way has `drain` to arrive.
    let deadline = Instant::now() + load.drain;
    while Instant::now() < deadline
        && !(shared.publisher_done.load(Ordering::Acquire)
            && shared.distinct.load(Ordering::Acquire) >= shared.expected.load(Ordering::Acquire))
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    mark(Mark::Drained);
    shared.phase.send_replace(Phase::Stop);
    let mut total = MwsResult {
        secs: load.duration.as_secs_f64(),
        connect_secs,
        ..Default::default()
    };
    for h in handles {
        match h.join() {
            Ok(r) => total.merge(&r),
            Err(_) => total.error("a generator thread panicked".into()),
        }
    }
    total.expected = shared.expected.load(Ordering::Acquire);
    total
}

/// Per-thread context.
struct Ctx {
    load: Arc<MwsLoad>,
    shared: Arc<Shared>,
    stats: RefCell<MwsResult>,
    connecting: Semaphore,
    /// Idle REST connections for reservations.
    pool: RefCell<Vec<Rest>>,
}

fn generator(t: usize, threads: usize, load: Arc<MwsLoad>, shared: Arc<Shared>) -> MwsResult {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        let mut r = MwsResult::default();
        r.error("cannot build a runtime".into());
        return r;
    };
    let ctx = Rc::new(Ctx {
        load: load.clone(),
        shared,
        stats: RefCell::new(MwsResult::default()),
        connecting: Semaphore::new(CONNECT_CONCURRENCY),
        pool: RefCell::new(Vec::new()),
    });
    let local = tokio::task::LocalSet::new();
    // This thread's sockets, interleaved with the other threads', a group per task.
    let mine: Vec<usize> = (t..load.sockets).step_by(threads).collect();
    let mut tasks = Vec::new();
    for group in mine.chunks(GROUP) {
        let (ctx, group) = (ctx.clone(), group.to_vec());
        tasks.push(local.spawn_local(async move {
            let mut sockets: FuturesUnordered<_> =
                group.into_iter().map(|i| socket(i, ctx.clone())).collect();
            while sockets.next().await.is_some() {}
        }));
    }
    if t == 0 {
        tasks.push(local.spawn_local(publisher(ctx.clone())));
    }
    local.block_on(&rt, async {
        for task in tasks {
            let _ = task.await;
        }
    });
    ctx.pool.borrow_mut().clear();
    ctx.stats.borrow().clone()
}

async fn wait_plan(rx: &mut watch::Receiver<Phase>) -> Option<Plan> {
    loop {
        match *rx.borrow_and_update() {
            Phase::Go(p) => return Some(p),
            Phase::Stop => return None,
            Phase::Wait => {}
        }
        if rx.changed().await.is_err() {
            return None;
        }
    }
}

async fn wait_stop(rx: &mut watch::Receiver<Phase>) {
    loop {
        if matches!(*rx.borrow_and_update(), Phase::Stop) || rx.changed().await.is_err() {
            return;
        }
    }
}

/// Reserves a socket with `tag` and opens it from `src`, resuming after `resume` (the last
/// envelope's number and epoch). Returns the stream and the bytes read past the handshake.
async fn open_socket(
    ctx: &Ctx,
    tag: Option<usize>,
    src: Option<Ipv4Addr>,
    silent: bool,
    resume: Option<(u64, &str)>,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let gw = &ctx.load.gateway;
    let body = match tag {
        Some(t) => format!(r#"{{"tags":["t{t}"]}}"#),
        None => "{}".to_owned(),
    };
    let req = gw.request("POST", &gw.path("sockets"), &body);
    let pooled = ctx.pool.borrow_mut().pop();
    let mut rest = match pooled {
        Some(r) => r,
        None => Rest::open(gw.addr).await?,
    };
    let (status, answer) = rest.call(&req).await?;
    ctx.pool.borrow_mut().push(rest);
    if status != 201 {
        return Err(io::Error::other(format!(
            "POST sockets: {status} {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )));
    }
    let uri = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v["uri"].as_str().map(str::to_owned))
        .ok_or_else(|| io::Error::other("POST sockets: no uri in the answer"))?;
    // The URI names the gateway's public host; the client connects where the bench says.
    let mut path = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .ok_or_else(|| io::Error::other(format!("odd socket uri {uri}")))?;
    if ctx.load.envelope {
        path.push_str("&envelope=1");
    }
    if let Some((since, epoch)) = resume {
        path.push_str(&format!("&since={since}&epoch={epoch}"));
    }
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::from((ip, 0)))?;
    }
    if silent && let Some(b) = ctx.load.silent_rcvbuf {
        sock.set_recv_buffer_size(b)?;
    }
    let mut s = sock.connect(gw.addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.host
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
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

/// One socket's whole life: open, read until the run stops (dropping and coming back if
/// asked), or, silent, read nothing until then and only then count what was waiting.
async fn socket(i: usize, ctx: Rc<Ctx>) {
    let load = &ctx.load;
    let shared = &ctx.shared;
    let tag = (load.tags > 0).then(|| i % load.tags);
    let src = source(shared.first_addr, i, load.per_address);
    let silent = chosen(i, load.sockets, load.silent, 0);
    let drops = load.drops.filter(|d| chosen(i, load.sockets, d.sockets, 1));
    let mut phase = shared.phase.subscribe();
    let opened = {
        let _permit = ctx.connecting.acquire().await;
        open_socket(&ctx, tag, src, silent, None).await
    };
    shared.opened.fetch_add(1, Ordering::AcqRel);
    let (stream, buf) = match opened {
        Ok(x) => {
            ctx.stats.borrow_mut().connected += 1;
            x
        }
        Err(e) => {
            {
                let mut s = ctx.stats.borrow_mut();
                s.connect_failed += 1;
                s.error(format!("connect: {e}"));
            }
            wait_stop(&mut phase).await;
            return;
        }
    };
    if silent && let Ok(a) = stream.local_addr() {
        load.silent_addrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a);
    }
    if !silent {
        shared.readers.fetch_add(1, Ordering::AcqRel);
        if let Some(t) = tag {
            shared.tag_readers[t].fetch_add(1, Ordering::AcqRel);
        }
    }
    let Some(plan) = wait_plan(&mut phase).await else {
        return;
    };
    if silent {
        wait_stop(&mut phase).await;
        read_backlog(&ctx, stream, buf).await;
        return;
    }
    let mut r = Reader {
        ctx: &ctx,
        plan,
        start_ns: (plan.start - shared.epoch).as_nanos() as u64,
        end_ns: (plan.end - shared.epoch).as_nanos() as u64,
        seen: Vec::new(),
        last: None,
        dropped_at: None,
    };
    let mut conn = Some((stream, buf));
    let mut drop_at = drops.map(|d| plan.start + d.after);
    while let Some((stream, buf)) = conn.take() {
        match r.read(stream, buf, &mut phase, drop_at).await {
            Outcome::Stopped => return,
            Outcome::Ended(code) => {
                let mut s = ctx.stats.borrow_mut();
                *s.closes.entry(code).or_default() += 1;
                s.broken += 1;
                return;
            }
            Outcome::Dropped => {
                drop_at = None;
                let away = drops.map_or(Duration::ZERO, |d| d.away);
                r.dropped_at = Some(Instant::now());
                tokio::time::sleep(away).await;
                let (seq, epoch) = r.last.clone().unwrap_or((0, String::new()));
                match open_socket(&ctx, tag, src, false, Some((seq, &epoch))).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        let mut s = ctx.stats.borrow_mut();
                        s.reconnect_failed += 1;
                        s.error(format!("reconnect: {e}"));
                    }
                }
            }
        }
    }
    wait_stop(&mut phase).await;
}

enum Outcome {
    /// The run stopped.
    Stopped,
    /// The server closed (the code, 1006 without a Close frame) or the connection broke.
    Ended(u16),
    /// The socket dropped itself as planned.
    Dropped,
}

struct Reader<'a> {
    ctx: &'a Ctx,
    plan: Plan,
    start_ns: u64,
    end_ns: u64,
    /// Message numbers received, one bit each.
    seen: Vec<u64>,
    /// The last envelope's number and epoch.
    last: Option<(u64, String)>,
    /// When the socket dropped itself (until its first frame after coming back).
    dropped_at: Option<Instant>,
}

impl Reader<'_> {
    async fn read(
        &mut self,
        mut stream: TcpStream,
        mut buf: Vec<u8>,
        phase: &mut watch::Receiver<Phase>,
        drop_at: Option<Instant>,
    ) -> Outcome {
        let far = self.plan.end + Duration::from_secs(3600);
        let dropping = drop_at.is_some();
        let drop_timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(drop_at.unwrap_or(far)));
        tokio::pin!(drop_timer);
        let mut pos = 0;
        loop {
            while let Some((opcode, payload, total)) = decode_frame(&buf[pos..]) {
                let p = pos + payload.start..pos + payload.end;
                pos += total;
                match opcode {
                    0x1 | 0x2 => self.frame(&buf[p]),
                    0x8 => {
                        let code = buf[p]
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                        return Outcome::Ended(code);
                    }
                    0x9 => {
                        let pong = pong_frame(&buf[p]);
                        if stream.write_all(&pong).await.is_err() {
                            return Outcome::Ended(1006);
                        }
                    }
                    _ => {}
                }
            }
            buf.drain(..pos);
            pos = 0;
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return Outcome::Ended(1006),
                    Ok(_) => {}
                },
                _ = phase.changed() => {
                    if matches!(*phase.borrow(), Phase::Stop) {
                        return Outcome::Stopped;
                    }
                }
                _ = &mut drop_timer, if dropping => return Outcome::Dropped,
            }
        }
    }

    /// One data frame: a message (raw, or in an envelope) or a recovery status.
    fn frame(&mut self, p: &[u8]) {
        if let Some(at) = self.dropped_at.take() {
            let ms = at.elapsed().as_secs_f64() * 1000.0;
            let mut s = self.ctx.stats.borrow_mut();
            s.max_back_ms = s.max_back_ms.max(ms);
        }
        if !self.ctx.load.envelope {
            if let Some((seq, sent)) = parse_message(p) {
                self.note(seq, sent);
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(p) else {
            return;
        };
        if let Some(ok) = v["recovered"].as_bool() {
            let mut s = self.ctx.stats.borrow_mut();
            if ok {
                s.recovered += 1;
                s.replayed += v["missed"].as_u64().unwrap_or(0);
            } else {
                s.gaps += 1;
            }
            return;
        }
        if let (Some(seq), Some(epoch)) = (v["seq"].as_u64(), v["epoch"].as_str()) {
            self.last = Some((seq, epoch.to_owned()));
        }
        if let Some((seq, sent)) = v["data"].as_str().and_then(|d| parse_message(d.as_bytes())) {
            self.note(seq, sent);
        }
    }

    fn note(&mut self, seq: u64, sent_ns: u64) {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let shared = &self.ctx.shared;
        let mut s = self.ctx.stats.borrow_mut();
        if self.seen[word] & bit != 0 {
            s.duplicated += 1;
            return;
        }
        self.seen[word] |= bit;
        s.distinct += 1;
        shared.delivered(seq);
        let now = shared.now_ns();
        if now >= self.start_ns && now < self.end_ns {
            s.window_deliveries += 1;
        }
        if sent_ns >= self.start_ns && sent_ns < self.end_ns {
            s.hist.record(now.saturating_sub(sent_ns) / 1000);
        }
    }
}

/// A masked Pong echoing a Ping's payload (at most 125 bytes, as control frames are).
fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let p = &payload[..payload.len().min(125)];
    let mask = [0x1b, 0x2c, 0x3d, 0x4e];
    let mut f = vec![0x8a, 0x80 | p.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A silent socket, after the run: reads what waited for it (frames, then maybe a Close).
async fn read_backlog(ctx: &Ctx, mut stream: TcpStream, mut buf: Vec<u8>) {
    let mut frames = 0u64;
    let mut code = None;
    let mut pos = 0;
    'read: loop {
        while let Some((opcode, payload, total)) = decode_frame(&buf[pos..]) {
            match opcode {
                0x1 | 0x2 => frames += 1,
                0x8 => {
                    code = Some(
                        buf[pos + payload.start..pos + payload.end]
                            .get(..2)
                            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                    );
                    break 'read;
                }
                _ => {}
            }
            pos += total;
        }
        buf.drain(..pos);
        pos = 0;
        buf.reserve(64 * 1024);
        match tokio::time::timeout(Duration::from_secs(1), stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                code = Some(1006);
                break;
            }
            // Nothing more for a second: still open.
            Err(_) => break,
        }
    }
    let mut s = ctx.stats.borrow_mut();
    s.silent_frames += frames;
    if let Some(c) = code {
        *s.silent_closes.entry(c).or_default() += 1;
    }
}

/// The publisher: `publishers` connections posting as the mode says until the window ends.
async fn publisher(ctx: Rc<Ctx>) {
    let mut phase = ctx.shared.phase.subscribe();
    let Some(plan) = wait_plan(&mut phase).await else {
        ctx.shared.publisher_done.store(true, Ordering::Release);
        return;
    };
    let next_seq = Rc::new(Cell::new(0u64));
    let next_at = Rc::new(Cell::new(plan.go));
    let conns = match ctx.load.publish {
        Publish::Idle => 1,
        _ => ctx.load.publishers.max(1),
    };
    let mut all = FuturesUnordered::new();
    for c in 0..conns {
        all.push(post_loop(c, &ctx, plan, &next_seq, &next_at));
    }
    while all.next().await.is_some() {}
    ctx.shared.publisher_done.store(true, Ordering::Release);
}

/// One publishing connection: a writer posting and a reader counting the answers.
async fn post_loop(c: usize, ctx: &Ctx, plan: Plan, next_seq: &Cell<u64>, next_at: &Cell<Instant>) {
    let load = &ctx.load;
    let shared = &ctx.shared;
    let mut stream = match TcpStream::connect(load.gateway.addr).await {
        Ok(s) => s,
        Err(e) => {
            ctx.stats.borrow_mut().error(format!("publisher {c}: {e}"));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let in_flight = Semaphore::new(load.pipeline.max(1));
    let (written, answered) = (Cell::new(0u64), Cell::new(0u64));
    let writing = Cell::new(true);
    // The writer wakes the reader when an answer is owed, or when it stops.
    let posted = tokio::sync::Notify::new();
    let end = tokio::time::Instant::from_std(plan.end);
    let path = load.gateway.path("messages");
    let writer = async {
        loop {
            if Instant::now() >= plan.end {
                break;
            }
            match load.publish {
                Publish::Paced { interval } | Publish::PacedTags { interval } => {
                    let at = next_at.get();
                    next_at.set(at + interval);
                    if at >= plan.end {
                        break;
                    }
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                }
                Publish::Idle => {
                    tokio::time::sleep_until(end).await;
                }
                Publish::Saturate { .. } | Publish::Tags { .. } => {
                    match tokio::time::timeout_at(end, shared.credits.acquire()).await {
                        Ok(Ok(p)) => p.forget(),
                        _ => break,
                    }
                }
            }
            match tokio::time::timeout_at(end + Duration::from_secs(5), in_flight.acquire()).await {
                Ok(Ok(p)) => p.forget(),
                _ => break,
            }
            let seq = next_seq.get();
            next_seq.set(seq + 1);
            let tag = match load.publish {
                Publish::Tags { .. } | Publish::PacedTags { .. } => {
                    Some(seq as usize % load.tags.max(1))
                }
                _ => None,
            };
            let want = match tag {
                Some(t) => shared.tag_readers[t].load(Ordering::Acquire),
                None => shared.readers.load(Ordering::Acquire),
            };
            if shared.gated {
                let slot = &shared.slots[seq as usize % RING];
                slot.got.store(0, Ordering::Release);
                slot.want.store(want, Ordering::Release);
                slot.seq.store(seq, Ordering::Release);
                if want == 0 {
                    shared.credits.add_permits(1);
                }
            }
            shared.expected.fetch_add(u64::from(want), Ordering::AcqRel);
            let data = message(seq, shared.now_ns(), load.size);
            let body = match tag {
                Some(t) => format!(r#"{{"data":"{data}","receivers":{{"tags":["t{t}"]}}}}"#),
                None => format!(r#"{{"data":"{data}","receivers":{{"sockets":["*"]}}}}"#),
            };
            let req = load.gateway.request("POST", &path, &body);
            if let Err(e) = wr.write_all(&req).await {
                ctx.stats.borrow_mut().error(format!("publish: {e}"));
                break;
            }
            written.set(written.get() + 1);
            posted.notify_one();
            if matches!(load.publish, Publish::Idle) {
                break;
            }
        }
        writing.set(false);
        posted.notify_one();
    };
    let reader = async {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            if answered.get() >= written.get() {
                if !writing.get() {
                    break;
                }
                posted.notified().await;
                continue;
            }
            let read =
                tokio::time::timeout(Duration::from_secs(30), read_answer(&mut rd, &mut buf));
            match read.await {
                Ok(Ok((status, body))) => {
                    answered.set(answered.get() + 1);
                    in_flight.add_permits(1);
                    let mut s = ctx.stats.borrow_mut();
                    if status == 201 {
                        s.publish_ok += 1;
                        let now = Instant::now();
                        if now >= plan.start && now < plan.end {
                            s.window_acked += 1;
                        }
                    } else {
                        s.publish_failed += 1;
                        s.error(format!(
                            "publish: {status} {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ));
                    }
                }
                Ok(Err(e)) => {
                    ctx.stats.borrow_mut().error(format!("publish answer: {e}"));
                    break;
                }
                Err(_) => {
                    ctx.stats
                        .borrow_mut()
                        .error("publish: no answer for 30 s".to_owned());
                    break;
                }
            }
        }
    };
    tokio::join!(writer, reader);
    let mut s = ctx.stats.borrow_mut();
    s.published += written.get();
    s.publish_failed += written.get().saturating_sub(answered.get());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_number_and_time() {
        let m = message(42, 1_234_567, 100);
        assert_eq!(m.len(), 100);
        assert_eq!(parse_message(m.as_bytes()), Some((42, 1_234_567)));
        assert_eq!(parse_message(b"short"), None);
    }

    #[test]
    fn chosen_sockets_are_spread_and_kinds_do_not_overlap() {
        let silent: Vec<usize> = (0..1000).filter(|&i| chosen(i, 1000, 10, 0)).collect();
        let drops: Vec<usize> = (0..1000).filter(|&i| chosen(i, 1000, 10, 1)).collect();
        assert_eq!(silent.len(), 10);
        assert_eq!(drops.len(), 10);
        assert!(silent.iter().all(|i| !drops.contains(i)));
        assert_eq!(silent[1] - silent[0], 100);
    }

    #[test]
    fn sources_rotate_over_the_loopback_range() {
        assert_eq!(source(0, 0, 4000), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source(0, 8000, 4000), Some(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(source(252, 4000, 4000), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source(0, 5, 0), None);
    }

    #[test]
    fn pongs_are_masked_echoes() {
        let f = pong_frame(b"hi");
        let (op, range, total) = decode_frame(&f).unwrap();
        assert_eq!((op, total), (0xa, 8));
        let mask = [f[2], f[3], f[4], f[5]];
        let p: Vec<u8> = f[range]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(p, b"hi");
    }
}
