//! One client's WebSocket to a gateway, from the moment its token connected it: messages
//! routed to it are written as text frames, in order, as they come; the gateway pings it
//! every `ping_every` (45 s by default, always under the router's 60 s idle rule) and drops a
//! client that answered none of the last two pings; frames from the client are read (so its
//! pongs and Close are seen) and ignored as MWS ignored them ("raw mode"), or handed to the
//! gateway's forwarder when its configuration names one (see [`crate::forward`]).
//!
//! How a session ends says why, in its Close: 1013 when the gateway cut a socket too slow to
//! keep up, 1008 when the client sent frames faster than the app they are forwarded to takes
//! them, 1000 when the socket was deleted through the API, 1012 when the server shuts down.
//!
//! Memory: tungstenite's defaults allocate 128 KiB read and write buffers per connection,
//! let the write buffer grow without bound and accept 64 MiB messages. [`config`] sets small
//! buffers, a bounded write buffer and a small message limit; the socket's bounded queue in
//! the hub holds what waits beyond that.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::forward::Frame;
use crate::hub::{Closed, Connected, Hub, Recovery};

/// A session's timing and the gateways' limits on sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How often the gateway pings the client.
    pub ping_every: Duration,
    /// Sockets one client address may hold open across all gateways; past it, a handshake
    /// is refused with 429 (the token stays unused).
    pub max_per_address: usize,
    /// How long a batch of messages may take to reach the client's socket before the
    /// client is cut as too slow (one that stopped reading).
    pub send_timeout: Duration,
}

/// The default of [`SessionOptions::max_per_address`].
pub const MAX_PER_ADDRESS: usize = 1000;

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            ping_every: Duration::from_secs(45),
            max_per_address: MAX_PER_ADDRESS,
            send_timeout: SEND_TIMEOUT,
        }
    }
}

/// Messages written to a socket in one go at most.
const BATCH: usize = 64;
/// Bytes taken from a socket's queue for one write at most (past one message): what a batch
/// in flight to a client that stopped reading holds.
const BATCH_BYTES: usize = 64 << 10;

/// The default of [`SessionOptions::send_timeout`].
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the kernel may queue for one client (`SO_SNDBUF`, doubled by Linux for its
/// bookkeeping): left to itself, Linux grows a socket's send buffer to `tcp_wmem`'s maximum (4
/// MiB by default) for a client that stopped reading, before a write ever stalls. 64 KiB holds
/// hundreds of pushes on the way to a client that reads, and a stalled one is cut after
/// [`SEND_TIMEOUT`] with at most this much held for it.
pub const SEND_BUFFER: usize = 64 << 10;

/// The WebSocket configuration of gateway connections (see the module's note on memory).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Clients send little (pongs; frames for a forward): a small read buffer is most of
        // an idle socket's memory saved.
        .read_buffer_size(1 << 10)
        // Frames collect up to this before a write: a batch is one syscall, not one per frame.
        .write_buffer_size(16 << 10)
        .max_write_buffer_size(256 << 10)
        // A client frame (a pong, or a message to forward) is at most 64 KiB.
        .max_message_size(Some(64 << 10))
        .max_frame_size(Some(64 << 10))
}

/// How messages are framed for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `data` verbatim, one text frame per message: what MWS clients expect.
    Raw,
    /// Opted in with `envelope=1` on the URI: `{"seq":N,"epoch":E,"data":"…"}` per message, so
    /// a client knows what it saw and can recover what it missed after a reconnect.
    Envelope {
        /// The gateway history's epoch.
        epoch: String,
    },
}

impl Framing {
    fn frame(&self, d: crate::hub::Delivery) -> Option<Utf8Bytes> {
        match self {
            Framing::Raw => Utf8Bytes::try_from(d.data).ok(),
            Framing::Envelope { epoch } => {
                let data = std::str::from_utf8(&d.data).ok()?;
                Some(
                    serde_json::json!({"seq": d.seq, "epoch": epoch, "data": data})
                        .to_string()
                        .into(),
                )
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed, or its connection broke.
    ClientGone,
    /// The client answered none of the last two pings.
    NoPong,
    /// The gateway cut the socket as too slow (Close 1013).
    TooSlow,
    /// The client sent frames faster than the app they are forwarded to takes them (1008).
    TooFast,
    /// The socket was deleted through the API (Close 1000).
    Deleted,
    /// The server is shutting down (Close 1012).
    Shutdown,
}

/// How one client's session begins and where its frames go.
#[derive(Debug)]
pub struct Opening {
    /// How messages are framed for it.
    pub framing: Framing,
    /// What it missed, when it came back with the last number it saw.
    pub recovery: Option<Recovery>,
    /// Where its own frames go, when its gateway forwards them.
    pub forward: Option<tokio::sync::mpsc::Sender<Frame>>,
}

/// Runs one connected socket until it ends; the hub forgets it then.
///
/// With a `recovery` (the client came back with the last number it saw), the first frame says
/// whether what it missed could be recovered (`{"recovered":true,"epoch":E,"missed":N}` or
/// `{"recovered":false,"epoch":E}`: resync), then the missed messages follow, then live ones.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    mut connected: Connected,
    hub: &Hub,
    options: &SessionOptions,
    shutdown: &CancellationToken,
    opening: Opening,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opening {
        framing,
        recovery,
        forward,
    } = opening;
    if let Some(recovery) = recovery {
        let (status, missed) = match recovery {
            Recovery::Complete(missed) => (
                serde_json::json!({"recovered": true, "epoch": hub.epoch(), "missed": missed.len()}),
                missed,
            ),
            Recovery::Gap => (
                serde_json::json!({"recovered": false, "epoch": hub.epoch()}),
                Vec::new(),
            ),
        };
        let mut ok = ws
            .send(Message::Text(status.to_string().into()))
            .await
            .is_ok();
        for d in missed {
            if !ok {
                break;
            }
            if let Some(text) = framing.frame(d) {
                ok = ws.send(Message::Text(text)).await.is_ok();
            }
        }
        if !ok {
            hub.disconnect(&connected.id);
            return Ended::ClientGone;
        }
    }
    let mut ping = tokio::time::interval(options.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: no ping before one interval has passed.
    ping.tick().await;
    let mut last_pong = Instant::now();
    let ended = loop {
        tokio::select! {
            d = connected.queue.recv() => match d {
                Some(d) => {
                    // Everything waiting goes out in one write (a frame per syscall was most
                    // of the gateway's CPU in a fan-out), within SEND_TIMEOUT: a client that
                    // stops reading is cut rather than holding its session forever.
                    let mut bytes = d.data.len();
                    let mut batch = vec![d];
                    while batch.len() < BATCH && bytes < BATCH_BYTES {
                        match connected.queue.try_recv() {
                            Ok(d) => {
                                bytes += d.data.len();
                                batch.push(d);
                            }
                            Err(_) => break,
                        }
                    }
                    connected.taken(bytes);
                    let sent = tokio::time::timeout(options.send_timeout, async {
                        for d in batch {
                            // `data` comes from a JSON string, so it is text; a frame that is
                            // not would break the protocol, so it would be skipped.
                            if let Some(text) = framing.frame(d) {
                                ws.feed(Message::Text(text)).await?;
                            }
                        }
                        ws.flush().await
                    })
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break Ended::ClientGone,
                        Err(_) => {
                            hub.disconnect(&connected.id);
                            close(&mut ws, CloseCode::Again, "too slow to keep up").await;
                            break Ended::TooSlow;
                        }
                    }
                }
                None => {
                    let (ended, code, reason) = match connected.closed() {
                        Closed::TooSlow => (Ended::TooSlow, CloseCode::Again, "too slow to keep up"),
                        _ => (Ended::Deleted, CloseCode::Normal, "socket deleted"),
                    };
                    close(&mut ws, code, reason).await;
                    break ended;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ended::ClientGone,
                Some(Ok(Message::Text(t))) => {
                    if !hand_over(forward.as_ref(), Frame { body: t.into(), text: true }) {
                        close(&mut ws, CloseCode::Policy, "sending faster than the app takes it").await;
                        break Ended::TooFast;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if !hand_over(forward.as_ref(), Frame { body: b, text: false }) {
                        close(&mut ws, CloseCode::Policy, "sending faster than the app takes it").await;
                        break Ended::TooFast;
                    }
                }
                // Pings are answered by the library.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > options.ping_every * 2 + options.ping_every / 2 {
                    close(&mut ws, CloseCode::Policy, "no pong").await;
                    break Ended::NoPong;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break Ended::ClientGone;
                }
            }
            _ = shutdown.cancelled() => {
                close(&mut ws, CloseCode::Restart, "server restarting").await;
                break Ended::Shutdown;
            }
        }
    };
    hub.disconnect(&connected.id);
    ended
}

/// Hands a client's frame to the forwarder, if the gateway has one (without one the frame
/// goes nowhere, as in the original MWS); false when the forwarder's queue is full.
fn hand_over(forward: Option<&tokio::sync::mpsc::Sender<Frame>>, frame: Frame) -> bool {
    match forward.map(|f| f.try_send(frame)) {
        Some(Err(tokio::sync::mpsc::error::TrySendError::Full(_))) => false,
        // Sent, no forwarder, or a forwarder that ended (the server is stopping).
        _ => true,
    }
}

/// Sends a Close, waiting at most a second for a client that does not read.
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HubOptions, Receivers};
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// A real WebSocket connection on 127.0.0.1: the server half runs a session for a socket
    /// reserved with `tags`.
    async fn pair(
        hub: &Arc<Hub>,
        tags: &[&str],
        options: SessionOptions,
        shutdown: CancellationToken,
        connect_now: bool,
    ) -> (Client, tokio::task::JoinHandle<Ended>, String) {
        pair_with(hub, tags, options, shutdown, connect_now, None).await
    }

    async fn pair_with(
        hub: &Arc<Hub>,
        tags: &[&str],
        options: SessionOptions,
        shutdown: CancellationToken,
        connect_now: bool,
        forward: Option<tokio::sync::mpsc::Sender<Frame>>,
    ) -> (Client, tokio::task::JoinHandle<Ended>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = hub
            .reserve(tags.iter().map(|t| t.to_string()).collect(), Instant::now())
            .unwrap();
        let id = r.id.clone();
        let connected = connect_now.then(|| hub.connect(&r.token, Instant::now()).unwrap());
        let hub2 = hub.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config()))
                .await
                .unwrap();
            let connected = match connected {
                Some(c) => c,
                None => hub2.connect(&r.token, Instant::now()).unwrap(),
            };
            run(
                ws,
                connected,
                &hub2,
                &options,
                &shutdown,
                Opening {
                    framing: Framing::Raw,
                    recovery: None,
                    forward,
                },
            )
            .await
        });
        let (client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        (client, server, id)
    }

    fn hub(queue: usize) -> Arc<Hub> {
        Arc::new(Hub::new(HubOptions {
            queue,
            ..HubOptions::default()
        }))
    }

    fn to(tag: &str) -> Receivers {
        Receivers {
            sockets: None,
            tags: Some(vec![tag.to_owned()]),
        }
    }

    async fn next_text(c: &mut Client) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn close_code(c: &mut Client) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_client_frames_are_ignored() {
        let h = hub(16);
        let (mut c, server, _) = pair(
            &h,
            &["room"],
            SessionOptions::default(),
            CancellationToken::new(),
            false,
        )
        .await;
        // The session connects the socket once the handshake is done.
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.sockets(Some("room")).is_empty() {
            assert!(Instant::now() < deadline, "the session never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.send(Message::text("ignored")).await.unwrap();
        for i in 0..3 {
            h.publish(Bytes::from(format!("m{i}")), &to("room"), Instant::now());
        }
        for i in 0..3 {
            assert_eq!(next_text(&mut c).await, format!("m{i}"));
        }
        c.close(None).await.unwrap();
        assert_eq!(server.await.unwrap(), Ended::ClientGone);
        assert!(h.sockets(None).is_empty(), "the hub forgot it");
    }

    #[tokio::test]
    async fn client_frames_reach_the_forwarder_in_order_and_a_flood_is_closed_1008() {
        let h = hub(16);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let (mut c, server, _) = pair_with(
            &h,
            &[],
            SessionOptions::default(),
            CancellationToken::new(),
            true,
            Some(tx),
        )
        .await;
        c.send(Message::text("one")).await.unwrap();
        c.send(Message::binary(vec![0u8, 255])).await.unwrap();
        let f = rx.recv().await.unwrap();
        assert_eq!((&f.body[..], f.text), (&b"one"[..], true));
        let f = rx.recv().await.unwrap();
        assert_eq!((&f.body[..], f.text), (&[0u8, 255][..], false));
        // Nobody takes the frames now: the fifth one finds the queue full.
        for i in 0..5 {
            c.send(Message::text(format!("f{i}"))).await.unwrap();
        }
        assert_eq!(close_code(&mut c).await, Some(CloseCode::Policy));
        assert_eq!(server.await.unwrap(), Ended::TooFast);
        // The four that fitted were kept, in order.
        for i in 0..4 {
            assert_eq!(rx.recv().await.unwrap().body, format!("f{i}"));
        }
    }

    #[tokio::test]
    async fn a_cut_socket_gets_what_was_queued_then_close_1013() {
        let h = hub(4);
        let shutdown = CancellationToken::new();
        // Connected (and queued to) before its writer runs: the fifth message overflows.
        let (mut c, server, id) = pair(&h, &["t"], SessionOptions::default(), shutdown, true).await;
        for i in 0..5 {
            let p = h.publish(Bytes::from(format!("m{i}")), &to("t"), Instant::now());
            assert_eq!(p.cut.is_empty(), i < 4, "{p:?}");
        }
        for i in 0..4 {
            assert_eq!(next_text(&mut c).await, format!("m{i}"));
        }
        assert_eq!(close_code(&mut c).await, Some(CloseCode::Again));
        assert_eq!(server.await.unwrap(), Ended::TooSlow);
        assert!(h.socket(&id).is_none());
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_within_the_send_timeout() {
        let h = hub(4096);
        let quick = SessionOptions {
            send_timeout: Duration::from_millis(300),
            ..SessionOptions::default()
        };
        // The client never reads: the kernel's buffers fill, then a write waits.
        let (_silent, server, id) = pair(&h, &["t"], quick, CancellationToken::new(), true).await;
        let big = Bytes::from(vec![b'x'; 16 << 10]);
        for _ in 0..2000 {
            h.publish(big.clone(), &to("t"), Instant::now());
            if h.socket(&id).is_none() {
                break;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the session ended")
            .unwrap();
        assert_eq!(ended, Ended::TooSlow);
        assert!(h.socket(&id).is_none());
    }

    #[tokio::test]
    async fn a_deleted_socket_is_closed_normally_and_shutdown_is_1012() {
        let h = hub(16);
        let (mut c, server, id) = pair(
            &h,
            &[],
            SessionOptions::default(),
            CancellationToken::new(),
            true,
        )
        .await;
        assert!(h.delete(&id));
        assert_eq!(close_code(&mut c).await, Some(CloseCode::Normal));
        assert_eq!(server.await.unwrap(), Ended::Deleted);

        let stop = CancellationToken::new();
        let (mut c, server, _) = pair(&h, &[], SessionOptions::default(), stop.clone(), true).await;
        stop.cancel();
        assert_eq!(close_code(&mut c).await, Some(CloseCode::Restart));
        assert_eq!(server.await.unwrap(), Ended::Shutdown);
    }

    #[tokio::test]
    async fn the_gateway_pings_and_drops_a_client_that_never_answers() {
        let h = hub(16);
        let fast = SessionOptions {
            ping_every: Duration::from_millis(150),
            ..SessionOptions::default()
        };
        // A client that reads (so its library answers pings) sees pings and stays.
        let (mut c, server, id) = pair(&h, &[], fast.clone(), CancellationToken::new(), true).await;
        let mut pings = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(800) {
            if let Ok(Some(Ok(Message::Ping(_)))) =
                tokio::time::timeout(Duration::from_millis(100), c.next()).await
            {
                pings += 1;
            }
        }
        assert!(pings >= 3, "{pings} pings in 800 ms");
        assert!(h.socket(&id).is_some(), "an answering client stays");
        drop(c);
        assert_eq!(server.await.unwrap(), Ended::ClientGone);

        // A client that never reads never answers: dropped after about two pings.
        let (_silent, server, id) = pair(&h, &[], fast, CancellationToken::new(), true).await;
        let ended = tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the silent client was dropped")
            .unwrap();
        assert_eq!(ended, Ended::NoPong);
        assert!(h.socket(&id).is_none());
    }
}
