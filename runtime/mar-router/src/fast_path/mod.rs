//! The HTTP/1.1 fast path for proxied app traffic. One task per client connection reads a
//! request head, writes the rewritten head and body to a pooled connection to the app, and
//! streams the response back: no task hand-offs, no header maps, and in the common case one
//! read and one write on each side per request. It takes only plain HTTP/1.1 requests for apps
//! behind ports; anything else (HTTP/2, HTTP/1.0, upgrades, `Expect`, odd framing, the
//! platform, in-process handlers, error cases decided before forwarding) goes to the general
//! hyper path with the bytes already read put back in front.
//!
//! Invariant: the fast path and the general path answer the same requests the same way: same
//! forwarded headers, same error pages and codes, same access log line.

mod chunked;
mod head;
mod prefixed;

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Body;
use crate::failure::{Ending, Failure};
use crate::forwarding::{Forwarded, Inbound, new_request_id};
use crate::shared::{Ctx, ServerLimits, Shared};
use crate::table::{AppOptions, InFlight, Resolution, Resolved, Upstream};
use chunked::{Chunked, LAST_CHUNK, encode_chunk};
use head::{Parsed, RequestBody, RequestHead, ResponseBody, ResponseParsed};

pub(crate) use prefixed::Prefixed;

/// A keep-alive connection with no request for this long is closed (nginx's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(75);
/// Bytes read at a time from an app (and from a client sending a body).
const READ_CHUNK: usize = 16 << 10;
/// Room for a response head: most are a few hundred bytes, and a WebSocket handshake should not
/// leave a large buffer behind.
const HEAD_CHUNK: usize = 4 << 10;
/// Largest response head accepted from an app.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// Time a TLS client gets to take the close_notify.
const TLS_CLOSE: Duration = Duration::from_secs(5);
/// Buffers that grew past this (a big head, a big body) are given back after the request, so
/// an idle keep-alive connection stays small.
const KEEP_BUFFER: usize = 64 << 10;
/// How long a client that is still sending a body it will never have read is given to see
/// its response before the connection closes.
const LINGER: Duration = Duration::from_secs(5);
/// Body bytes copied next to a head so both go out in one write.
const COALESCE: usize = 16 << 10;

/// How the fast path left a connection.
pub(crate) enum Outcome<IO> {
    /// Closed, or the client went away.
    Done,
    /// The next request is for the general path: serve the connection from there on.
    HandOff(Prefixed<IO>),
    /// The app switched protocols (WebSocket): relay the connection from there on.
    WebSocket(Box<WebSocket<IO>>),
}

/// An upgraded connection and its app connection, ready to relay. The fast path's buffers
/// are gone by now: an idle WebSocket holds only what the relay needs.
pub(crate) struct WebSocket<IO> {
    client: Prefixed<IO>,
    app: Prefixed<TcpStream>,
    ws: crate::WsOptions,
    upstream: (Upstream, InFlight),
    record: crate::tracked::Record,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WebSocket<IO> {
    /// Relays until the WebSocket ends.
    pub async fn run(self, shared: &Shared) {
        let metrics = shared.metrics.app(&self.record.app);
        crate::shared::websocket_session(
            self.client,
            self.app,
            self.ws,
            self.upstream,
            shared.closing.clone(),
            metrics,
            self.record,
        )
        .await;
    }
}

/// The bytes left in `buf`, copied out so that the connection's read buffer is freed.
fn rest(buf: &mut BytesMut) -> bytes::Bytes {
    let rest = bytes::Bytes::copy_from_slice(buf);
    buf.clear();
    rest
}

/// Buffers reused across the requests of one connection.
struct Scratch {
    /// The request head (and body bytes) for the app.
    up: Vec<u8>,
    /// What the app sent.
    from_app: BytesMut,
    /// The response head (and body bytes) for the client.
    down: Vec<u8>,
}

impl Scratch {
    /// Room for typical heads up front: growing a Vec from empty costs a chain of
    /// reallocations on every new connection.
    fn new() -> Self {
        Self {
            up: Vec::with_capacity(1024),
            from_app: BytesMut::new(),
            down: Vec::with_capacity(1024),
        }
    }

    /// Gives back buffers a big request or response made large.
    fn shrink(&mut self) {
        for v in [&mut self.up, &mut self.down] {
            if v.capacity() > KEEP_BUFFER {
                *v = Vec::new();
            }
        }
        if self.from_app.capacity() > KEEP_BUFFER && self.from_app.is_empty() {
            self.from_app = BytesMut::new();
        }
    }
}

/// Serves a client connection until it closes or needs the general path.
pub(crate) async fn serve<IO>(
    proxy: &Shared,
    mut io: IO,
    inbound: Inbound,
    limits: ServerLimits,
    shutdown: &CancellationToken,
) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut scratch = Scratch::new();
    let mut first = true;
    loop {
        let mut head = match read_head(&mut io, &mut buf, limits, first, shutdown).await {
            Some(Parsed::Fast(h)) => h,
            Some(_) => return Outcome::HandOff(Prefixed::new(rest(&mut buf), io)),
            None => return Outcome::Done,
        };
        first = false;
        let Resolved::App {
            app,
            target: Resolution::Upstream(up, guard),
            options,
        } = proxy.table.resolve(Some(&head.host))
        else {
            return Outcome::HandOff(Prefixed::new(rest(&mut buf), io));
        };
        if matches!(head.body, RequestBody::Length(n) if n > options.max_body) {
            // The general path answers 413 with its page and log line.
            return Outcome::HandOff(Prefixed::new(rest(&mut buf), io));
        }
        let ctx = Ctx {
            app,
            rid: head.request_id.take().unwrap_or_else(new_request_id),
            method: std::mem::take(&mut head.method),
            path: std::mem::take(&mut head.target),
            host: std::mem::take(&mut head.host),
            json: head.json,
            start: Instant::now(),
            inbound,
        };
        let exchange = Exchange {
            proxy,
            ctx,
            options: &options,
            is_head: head.is_head,
        };
        let keep = if head.upgrade {
            match exchange
                .upgrade(&mut io, &mut buf, &head, up, guard, &mut scratch)
                .await
            {
                Ok((app, upstream, record)) => {
                    return Outcome::WebSocket(Box::new(WebSocket {
                        client: Prefixed::new(rest(&mut buf), io),
                        app,
                        ws: options.ws,
                        upstream,
                        record,
                    }));
                }
                Err(keep) => keep,
            }
        } else {
            exchange
                .run(&mut io, &mut buf, &head, up, guard, &mut scratch)
                .await
        };
        scratch.shrink();
        if buf.capacity() > KEEP_BUFFER && buf.len() < 4096 {
            let mut small = BytesMut::with_capacity(4096);
            small.extend_from_slice(&buf);
            buf = small;
        }
        if !keep || head.close || shutdown.is_cancelled() {
            // TLS needs its close_notify; a TCP connection's FIN goes out when it is dropped,
            // so a shutdown() first would only cost a syscall per connection.
            if inbound.tls {
                let _ = tokio::time::timeout(TLS_CLOSE, io.shutdown()).await;
            }
            return Outcome::Done;
        }
    }
}

/// Reads until a whole request head is buffered. `None` when the connection closed, went
/// idle past the keep-alive timeout, was too slow with its head, or the server is stopping.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    limits: ServerLimits,
    first: bool,
    shutdown: &CancellationToken,
) -> Option<Parsed> {
    // A new connection must send its head in time (slowloris); between requests the client
    // may idle, and the head timer starts with the next request's first byte.
    let mut deadline = (first || !buf.is_empty())
        .then(|| tokio::time::Instant::now() + limits.header_read_timeout);
    // A head can only end with a line end: parse again only when one arrived, so a client
    // that sends its head a byte at a time costs one parse per line, not one per byte.
    let mut new_line = !buf.is_empty();
    loop {
        if new_line {
            match head::parse_request(buf) {
                Parsed::Partial if buf.len() < limits.max_header_bytes => {}
                // Too big: the general path answers 431.
                Parsed::Partial => return Some(Parsed::Slow),
                parsed => return Some(parsed),
            }
        } else if buf.len() >= limits.max_header_bytes {
            return Some(Parsed::Slow);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + KEEPALIVE_IDLE);
        let before = buf.len();
        let read = tokio::select! {
            r = tokio::time::timeout_at(until, io.read_buf(buf)) => r,
            _ = shutdown.cancelled(), if buf.is_empty() => return None,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        new_line = buf[before..].contains(&b'\n');
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.header_read_timeout);
    }
}

/// One request on the fast path.
struct Exchange<'a> {
    proxy: &'a Shared,
    ctx: Ctx,
    options: &'a AppOptions,
    is_head: bool,
}

/// The part of a request body still to come from the client.
struct Upload {
    body: BodyIn,
    /// Body bytes at the front of the read buffer, counted and not yet written to the app.
    pending: usize,
    /// Body bytes taken from the client so far.
    bytes_in: u64,
}

/// Request body still to be sent.
enum BodyIn {
    Done,
    Length(u64),
    Chunked(Chunked),
}

impl BodyIn {
    fn is_done(&self) -> bool {
        match self {
            BodyIn::Done => true,
            BodyIn::Length(n) => *n == 0,
            BodyIn::Chunked(c) => c.is_done(),
        }
    }

    /// How many bytes at the front of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8], sent: &mut u64, max: u64) -> Result<usize, Failure> {
        let n = match self {
            BodyIn::Done => 0,
            BodyIn::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                *sent += n;
                n as usize
            }
            BodyIn::Chunked(c) => {
                let n = c.feed(bytes).map_err(|_| Failure::BadBody)?;
                *sent = c.payload();
                n
            }
        };
        if *sent > max {
            return Err(Failure::TooLarge);
        }
        Ok(n)
    }
}

impl Exchange<'_> {
    /// Moves the request head out of `buf`, rewritten for the app, into `out`.
    fn take_head(&self, buf: &mut BytesMut, head: &RequestHead, upgrade: bool, out: &mut Vec<u8>) {
        out.clear();
        let forwarded = Forwarded::now(&self.ctx.inbound, &self.ctx.rid);
        head::write_upstream_head(&buf[..head.len], &forwarded, upgrade, out);
        buf.advance(head.len);
    }

    /// Forwards the request and relays the response. Returns whether the client connection
    /// can carry another request.
    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: &mut IO,
        buf: &mut BytesMut,
        head: &RequestHead,
        mut up: Upstream,
        mut guard: InFlight,
        scratch: &mut Scratch,
    ) -> bool {
        let proxy = self.proxy;
        self.take_head(buf, head, false, &mut scratch.up);
        let mut body = match head.body {
            RequestBody::Empty => BodyIn::Done,
            RequestBody::Length(n) => BodyIn::Length(n),
            RequestBody::Chunked => BodyIn::Chunked(Chunked::default()),
        };
        let mut bytes_in = 0;
        let max_body = self.options.max_body;
        let buffered = match body.take(buf, &mut bytes_in, max_body) {
            Ok(n) => n,
            Err(f) => return self.failed(io, f, &up).await,
        };
        scratch.up.extend_from_slice(&buf[..buffered]);
        buf.advance(buffered);
        // A request that is entirely in `scratch.up` can be sent again: to another instance
        // when one refuses the connection, or on a fresh connection when a pooled one turns
        // out to have been closed by the app.
        let replayable = body.is_done();
        let mut attempts = 0;
        // After a pooled connection turned out dead, the others pooled with it may be too.
        let mut skip_pool = false;
        let (mut stream, response) = loop {
            attempts += 1;
            let pooled = if skip_pool {
                None
            } else {
                proxy.pool.take(up.addr)
            };
            let (mut stream, reused) = match pooled {
                Some(s) => (s, true),
                None => match connect(up.addr, proxy.timeouts.connect).await {
                    Ok(s) => (s, false),
                    Err(_) => {
                        up.set_aside();
                        if replayable
                            && attempts < 3
                            && let Some((next, next_guard)) = proxy.another(&self.ctx.host, &up)
                        {
                            (up, guard) = (next, next_guard);
                            continue;
                        }
                        return self.failed(io, Failure::Refused, &up).await;
                    }
                },
            };
            let idle = proxy.timeouts.response_idle;
            let sent = matches!(
                tokio::time::timeout(idle, stream.write_all(&scratch.up)).await,
                Ok(Ok(()))
            );
            if sent && !body.is_done() {
                // The rest of the body is still with the client: never sent twice.
                let upload = Upload {
                    body,
                    pending: 0,
                    bytes_in,
                };
                // Boxed: its state is large, and inline it would make every connection's
                // task that much larger, which idle WebSockets pay for (the task's memory,
                // freed after the upgrade, stays between the relays' allocations): 11 KiB per
                // idle WebSocket instead of 7.
                return Box::pin(self.duplex(io, buf, head, stream, upload, (up, guard), scratch))
                    .await;
            }
            let got = if sent {
                let first_byte = tokio::time::Instant::now() + proxy.timeouts.first_byte;
                read_response_head(
                    &mut stream,
                    &mut scratch.from_app,
                    self.is_head,
                    false,
                    Some(first_byte),
                    proxy.timeouts.first_byte,
                    io,
                )
                .await
            } else {
                Err(Failure::Broken)
            };
            match got {
                Ok(h) => break (stream, h),
                // Sent again only if it may be sent twice: the app may have acted on it before
                // the connection broke. Not one byte of an answer came back.
                Err(Failure::Broken)
                    if replayable
                        && scratch.from_app.is_empty()
                        && attempts < 3
                        && is_idempotent(&self.ctx.method) =>
                {
                    if reused {
                        // A pooled connection the app had closed.
                        skip_pool = true;
                        continue;
                    }
                    // A fresh connection the instance dropped unanswered: it is going away
                    // (its listener closed with this connection still queued). As nginx's
                    // `proxy_next_upstream error`, the request goes to another instance.
                    up.set_aside();
                    match proxy.another(&self.ctx.host, &up) {
                        Some((next, next_guard)) => {
                            (up, guard) = (next, next_guard);
                            continue;
                        }
                        None => return self.failed(io, Failure::Broken, &up).await,
                    }
                }
                Err(f) => return self.failed(io, f, &up).await,
            }
        };
        scratch.down.clear();
        head::write_client_head(
            &scratch.from_app[..response.len],
            response.body,
            head.close,
            proxy.redirect_target(&self.ctx, response.status),
            &mut scratch.down,
        );
        scratch.from_app.advance(response.len);
        // `service=` is the time to the response head, as on the general path.
        let mut record = proxy.record_owned(self.ctx, &up.dyno, response.status);
        record.bytes_in = bytes_in;
        let relayed = relay_body(
            io,
            &mut stream,
            response.body,
            &mut scratch.from_app,
            &mut scratch.down,
            proxy.timeouts.response_idle,
        )
        .await;
        finish_relay(&record, &relayed);
        if relayed.is_err() {
            scratch.from_app.clear();
            return false;
        }
        if response.keep_alive && scratch.from_app.is_empty() && !up.retire.is_cancelled() {
            proxy.pool.put(up.addr, stream);
        }
        drop(guard);
        true
    }

    /// Sends the rest of the request body while waiting for the response, and goes on sending
    /// it while the response is relayed. An app may answer before it has read the whole body
    /// (a 413, a redirect), or stream its answer as it reads: neither waits for the upload.
    /// The first-byte timer starts once the body is sent; until then every read from the
    /// client and every write to the app gets the idle window, so a slow upload is not cut
    /// while it moves. Returns whether the client connection can carry another request: only
    /// when the client's body was read to its end before the response began.
    #[allow(clippy::too_many_arguments)]
    async fn duplex<IO: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: &mut IO,
        buf: &mut BytesMut,
        head: &RequestHead,
        mut stream: TcpStream,
        mut upload: Upload,
        (up, guard): (Upstream, InFlight),
        scratch: &mut Scratch,
    ) -> bool {
        let proxy = self.proxy;
        let (idle, first_byte) = (proxy.timeouts.response_idle, proxy.timeouts.first_byte);
        let max_body = self.options.max_body;
        let (mut client_in, mut client_out) = tokio::io::split(&mut *io);
        let (mut app_in, mut app_out) = stream.split();
        // `Some(true)` once the whole body was sent, `Some(false)` when the app stopped
        // taking it (it answered early, or closed).
        let mut uploaded: Option<bool> = None;
        let response = {
            let reading = read_response_head(
                &mut app_in,
                &mut scratch.from_app,
                self.is_head,
                false,
                None,
                first_byte,
                &mut client_out,
            );
            tokio::pin!(reading);
            let pump = pump_body(
                &mut client_in,
                buf,
                &mut app_out,
                &mut upload,
                max_body,
                idle,
            );
            tokio::pin!(pump);
            let mut deadline = None;
            loop {
                tokio::select! {
                    // The app's answer wins over the router's own (413, 408) when both are
                    // ready at once.
                    biased;
                    got = &mut reading => break got,
                    done = &mut pump, if uploaded.is_none() => match done {
                        Ok(()) => uploaded = Some(true),
                        // The app may have answered before it closed: wait for that answer.
                        Err(Failure::Broken) => uploaded = Some(false),
                        Err(f) => break Err(f),
                    },
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                        if deadline.is_some() => break Err(Failure::Timeout),
                }
                if uploaded.is_some() && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + first_byte);
                }
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(f) => {
                let keep = self.failed(&mut client_out, f, &up).await;
                // The app connection and the instance's in-flight count are not held while
                // the client lingers.
                drop((stream, guard));
                if uploaded != Some(true) {
                    linger(&mut client_in, &mut client_out).await;
                }
                return keep && uploaded == Some(true);
            }
        };
        // A client still sending its body cannot send another request on this connection.
        let in_step = uploaded == Some(true);
        scratch.down.clear();
        head::write_client_head(
            &scratch.from_app[..response.len],
            response.body,
            head.close || !in_step,
            proxy.redirect_target(&self.ctx, response.status),
            &mut scratch.down,
        );
        scratch.from_app.advance(response.len);
        let mut record = proxy.record_owned(self.ctx, &up.dyno, response.status);
        let relayed = {
            let relay = relay_body(
                &mut client_out,
                &mut app_in,
                response.body,
                &mut scratch.from_app,
                &mut scratch.down,
                idle,
            );
            tokio::pin!(relay);
            let pump = pump_body(
                &mut client_in,
                buf,
                &mut app_out,
                &mut upload,
                max_body,
                idle,
            );
            tokio::pin!(pump);
            loop {
                tokio::select! {
                    done = &mut pump, if uploaded.is_none() => uploaded = Some(done.is_ok()),
                    relayed = &mut relay => break relayed,
                }
            }
        };
        record.bytes_in = upload.bytes_in;
        finish_relay(&record, &relayed);
        if relayed.is_ok()
            && uploaded == Some(true)
            && response.keep_alive
            && scratch.from_app.is_empty()
            && !up.retire.is_cancelled()
        {
            proxy.pool.put(up.addr, stream);
        } else {
            drop(stream);
        }
        drop(guard);
        if uploaded != Some(true) {
            linger(&mut client_in, &mut client_out).await;
        }
        if relayed.is_err() {
            scratch.from_app.clear();
            return false;
        }
        in_step
    }

    /// Sends an upgrade request (WebSocket handshake) on a fresh connection to the app. On
    /// `101` the app's answer goes to the client and the connection pair is returned, ready to
    /// relay; any other answer is relayed as a response, and `Err` says whether the client
    /// connection can go on.
    async fn upgrade<IO: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: &mut IO,
        buf: &mut BytesMut,
        head: &RequestHead,
        up: Upstream,
        guard: InFlight,
        scratch: &mut Scratch,
    ) -> Result<
        (
            Prefixed<TcpStream>,
            (Upstream, InFlight),
            crate::tracked::Record,
        ),
        bool,
    > {
        let proxy = self.proxy;
        self.take_head(buf, head, true, &mut scratch.up);
        let Ok(mut stream) = connect(up.addr, proxy.timeouts.connect).await else {
            up.set_aside();
            return Err(self.failed(io, Failure::Refused, &up).await);
        };
        if stream.write_all(&scratch.up).await.is_err() {
            return Err(self.failed(io, Failure::Refused, &up).await);
        }
        let first_byte = tokio::time::Instant::now() + proxy.timeouts.first_byte;
        let response = match read_response_head(
            &mut stream,
            &mut scratch.from_app,
            false,
            true,
            Some(first_byte),
            proxy.timeouts.first_byte,
            io,
        )
        .await
        {
            Ok(h) => h,
            Err(f) => return Err(self.failed(io, f, &up).await),
        };
        let from_app = &mut scratch.from_app;
        if response.status == 101 {
            let idle = proxy.timeouts.response_idle;
            if write_within(io, &from_app[..response.len], idle)
                .await
                .is_err()
            {
                return Err(false);
            }
            from_app.advance(response.len);
            let early = rest(from_app);
            let record = proxy.record_owned(self.ctx, &up.dyno, 101);
            return Ok((Prefixed::new(early, stream), (up, guard), record));
        }
        // Refused: an ordinary response, after which the connection closes.
        scratch.down.clear();
        head::write_client_head(
            &from_app[..response.len],
            response.body,
            true,
            proxy.redirect_target(&self.ctx, response.status),
            &mut scratch.down,
        );
        from_app.advance(response.len);
        let record = proxy.record_owned(self.ctx, &up.dyno, response.status);
        let relayed = relay_body(
            io,
            &mut stream,
            response.body,
            from_app,
            &mut scratch.down,
            proxy.timeouts.response_idle,
        )
        .await;
        from_app.clear();
        finish_relay(&record, &relayed);
        Err(false)
    }

    /// Answers a failure with the router's error page and log line. Returns whether the
    /// client connection can go on: never after a failure (the request may not have been read
    /// completely, and the app's connection is in an unknown state).
    async fn failed<IO: AsyncWrite + Unpin>(self, io: &mut IO, f: Failure, up: &Upstream) -> bool {
        let resp = self
            .proxy
            .fail(&self.ctx, f, &up.dyno, self.options.max_body);
        if f.answers() {
            write_page(io, resp, true, self.is_head).await;
        }
        false
    }
}

/// Logs how relaying a response body ended.
fn finish_relay(record: &crate::tracked::Record, relayed: &Result<u64, (Failure, u64)>) {
    let ending = match relayed {
        Ok(_) => Ending::Complete,
        Err((Failure::ClientGone, _)) => Ending::ClientGone,
        // The app paused a streamed response past the idle window: the client sees the
        // connection end, as on the general path.
        Err((Failure::Timeout, _)) => Ending::ResponseIdle,
        // The head went out, so the client has part of an answer: Heroku's H18.
        Err(_) => Ending::Interrupted,
    };
    let (Ok(bytes_out) | Err((_, bytes_out))) = *relayed;
    record.finish(ending.code(), bytes_out);
}

/// Closes a client connection whose request body was not read to its end. Closing at once
/// would reset the connection while the client is still sending, and a reset can destroy
/// the response before the client reads it: so the write side closes first and what the
/// client still sends is read and dropped for a short while (nginx's lingering close).
async fn linger<R, W>(client_in: &mut R, client_out: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let drain = async {
        let _ = client_out.shutdown().await;
        let mut sink = [0u8; 8192];
        while let Ok(n) = client_in.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

async fn connect(addr: std::net::SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Small requests should not wait for Nagle's algorithm.
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends the rest of a request body as the client sends it. Cancel-safe: all progress lives
/// in `upload` and `buf` (the bytes at the front of `buf` already counted as body and not yet
/// written are `upload.pending`), so a call cut short by the app's answer can be resumed.
async fn pump_body<R, W>(
    client: &mut R,
    buf: &mut BytesMut,
    app: &mut W,
    upload: &mut Upload,
    max: u64,
    idle: Duration,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if upload.pending > 0 {
            // An app that stops reading the body (it answered first, or it is stuck) must not
            // hold this connection, its instance's in-flight count and a deploy forever.
            match tokio::time::timeout(idle, app.write(&buf[..upload.pending])).await {
                Ok(Ok(n)) if n > 0 => {
                    buf.advance(n);
                    upload.pending -= n;
                }
                _ => return Err(Failure::Broken),
            }
            continue;
        }
        if upload.body.is_done() {
            return Ok(());
        }
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout(idle, client.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(Failure::ClientGone),
                Err(_) => return Err(Failure::ClientIdle),
            }
        }
        upload.pending = upload.body.take(buf, &mut upload.bytes_in, max)?;
    }
}

/// Reads the app's response head into `from_app`, passing interim (1xx) responses on to the
/// client.
/// `deadline` bounds the wait (the first-byte timeout); `None` leaves that to the caller.
async fn read_response_head<S, IO>(
    stream: &mut S,
    from_app: &mut BytesMut,
    to_head: bool,
    upgrade: bool,
    deadline: Option<tokio::time::Instant>,
    write_limit: Duration,
    io: &mut IO,
) -> Result<head::ResponseHead, Failure>
where
    S: AsyncRead + Unpin,
    IO: AsyncWrite + Unpin,
{
    from_app.clear();
    loop {
        if !from_app.is_empty() {
            match head::parse_response(from_app, to_head) {
                ResponseParsed::Complete(h) if h.status == 101 && upgrade => return Ok(h),
                ResponseParsed::Complete(h) if h.status == 101 => return Err(Failure::Broken),
                ResponseParsed::Complete(h) if (100..200).contains(&h.status) => {
                    write_within(io, &from_app[..h.len], write_limit).await?;
                    from_app.advance(h.len);
                    continue;
                }
                ResponseParsed::Complete(h) => return Ok(h),
                ResponseParsed::Invalid => return Err(Failure::Broken),
                ResponseParsed::Partial if from_app.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::Broken);
                }
                ResponseParsed::Partial => {}
            }
        }
        from_app.reserve(HEAD_CHUNK);
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, stream.read_buf(from_app)).await,
            None => Ok(stream.read_buf(from_app).await),
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(Failure::Broken),
            Err(_) => return Err(Failure::Timeout),
        }
    }
}

/// Relays the response body after its head (in `down`), framed as the app framed it (or
/// chunked, when the app ends it by closing). Returns the body bytes sent, or why it stopped.
async fn relay_body<IO: AsyncWrite + Unpin, S: AsyncRead + Unpin>(
    io: &mut IO,
    stream: &mut S,
    framing: ResponseBody,
    from_app: &mut BytesMut,
    down: &mut Vec<u8>,
    idle: Duration,
) -> Result<u64, (Failure, u64)> {
    let mut left = match framing {
        ResponseBody::Length(n) => n,
        _ => 0,
    };
    let mut tracker = Chunked::default();
    let mut sent = 0u64;
    let mut eof = false;
    loop {
        let take = match framing {
            ResponseBody::Empty => 0,
            ResponseBody::Length(_) => left.min(from_app.len() as u64) as usize,
            ResponseBody::Chunked => tracker
                .feed(from_app)
                .map_err(|_| (Failure::Broken, sent))?,
            ResponseBody::UntilClose => from_app.len(),
        };
        left -= (take as u64).min(left);
        sent += take as u64;
        let done = match framing {
            ResponseBody::Empty => true,
            ResponseBody::Length(_) => left == 0,
            ResponseBody::Chunked => tracker.is_done(),
            ResponseBody::UntilClose => eof,
        };
        if framing == ResponseBody::UntilClose {
            encode_chunk(&from_app[..take], down);
            if done {
                down.extend_from_slice(LAST_CHUNK);
            }
        } else if take <= COALESCE {
            down.extend_from_slice(&from_app[..take]);
        } else {
            if !down.is_empty() {
                write_within(io, down, idle).await.map_err(|f| (f, sent))?;
                down.clear();
            }
            write_within(io, &from_app[..take], idle)
                .await
                .map_err(|f| (f, sent))?;
        }
        from_app.advance(take);
        if !down.is_empty() {
            write_within(io, down, idle).await.map_err(|f| (f, sent))?;
            down.clear();
        }
        if done {
            return Ok(sent);
        }
        if !from_app.is_empty() {
            // Bytes past the end of a framed body: the app is confused.
            return Err((Failure::Broken, sent));
        }
        from_app.reserve(READ_CHUNK);
        match tokio::time::timeout(idle, stream.read_buf(from_app)).await {
            Ok(Ok(0)) if framing == ResponseBody::UntilClose => eof = true,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err((Failure::Broken, sent)),
            Err(_) => return Err((Failure::Timeout, sent)),
        }
    }
}

/// Writes to the client, which must take the bytes within `idle`.
async fn write_within<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    bytes: &[u8],
    idle: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(idle, io.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Failure::ClientGone),
    }
}

/// Writes a router page (error pages are small, whole bodies).
async fn write_page<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    resp: http::Response<Body>,
    close: bool,
    to_head: bool,
) -> bool {
    use std::io::Write;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 256);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::CONNECTION {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let _ = write!(out, "content-length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !to_head {
        out.extend_from_slice(&body);
    }
    matches!(
        tokio::time::timeout(TLS_CLOSE, io.write_all(&out)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Handler, InProcessTarget, Metrics, Proxy, ResponseFuture, RouteTable, Timeouts};

    struct NoPlatform;

    impl Handler for NoPlatform {
        fn call(&self, _: http::Request<Body>) -> ResponseFuture {
            Box::pin(async { http::Response::new(crate::full("")) })
        }
    }

    #[test]
    fn a_connection_task_stays_small() {
        // An idle WebSocket pays for the size of the task that served its handshake (its
        // freed memory stays between the relays' allocations): rare, large states are boxed.
        let proxy = Proxy::new(
            Arc::new(RouteTable::new("localhost")),
            InProcessTarget::new("platform", Arc::new(NoPlatform)),
            None,
            Arc::new(Metrics::default()),
            CancellationToken::new(),
            Timeouts::default(),
        );
        let (io, _peer) = tokio::io::duplex(64);
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap_or(([0; 4], 0).into());
        let inbound = Inbound {
            client: addr,
            local: addr,
            tls: false,
            fd: None,
        };
        let shutdown = CancellationToken::new();
        let task = serve(
            &proxy.shared,
            io,
            inbound,
            ServerLimits::default(),
            &shutdown,
        );
        let size = std::mem::size_of_val(&task);
        println!("connection task: {size} bytes");
        assert!(size <= 3072, "the connection task grew to {size} bytes");
    }
}
