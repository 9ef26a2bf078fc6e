//! The WebSocket relay, with the MAR rule: after the `101`, bytes pass through unchanged in
//! both directions while a frame tracker per direction watches the boundaries. A connection
//! with no frame in either direction for the idle timeout is closed on both sides with a Close
//! (1001, "idle timeout"); pings and pongs count as frames, so apps that ping (as MAR required)
//! keep their clients. With router keepalive the router pings clients itself. Frames and
//! messages over the limits get a Close 1009; a deploy or shutdown that retires the instance
//! closes with 1012 (service restart). Half-closes propagate.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::frames::{FrameTracker, Violation, close_frame, ping_frame};

/// Per-app WebSocket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsOptions {
    /// No frame in either direction for this long closes the connection.
    pub idle_timeout: Duration,
    /// The router pings the client after half the idle timeout without frames.
    pub keepalive: bool,
    /// Largest frame accepted.
    pub max_frame: u64,
    /// Largest message (all fragments) accepted.
    pub max_message: u64,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keepalive: false,
            max_frame: 16 << 20,
            max_message: 64 << 20,
        }
    }
}

/// How a relayed WebSocket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (the normal end).
    Closed,
    /// No frame for the idle timeout (Heroku's H15).
    Idle,
    /// One side broke a limit or the protocol.
    Violation(Violation),
    /// The instance was retired or the router is shutting down.
    Restart,
    /// A read or write failed.
    Broken,
}

/// Bytes moved, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Client to app.
    pub up: u64,
    /// App to client.
    pub down: u64,
}

/// Read buffers start small, so that thousands of idle connections cost little; a read that
/// fills one doubles it, up to `BUF_MAX`, so a busy connection makes few syscalls.
const BUF_START: usize = 1024;
const BUF_MAX: usize = 64 << 10;

/// Doubles `buf` after a read filled it.
fn grow(buf: &mut Vec<u8>, filled: usize) {
    if filled == buf.len() && buf.len() < BUF_MAX {
        buf.resize(buf.len() * 2, 0);
    }
}

/// Relays until the connection ends, and says how. When `retire` completes (the instance is
/// retired, or the router stops), both sides get a Close (1012).
pub async fn relay<C, B>(
    client: C,
    backend: B,
    opts: WsOptions,
    retire: impl std::future::Future<Output = ()>,
) -> (Ended, Moved)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let mut up = FrameTracker::new(true, opts.max_frame, opts.max_message);
    let mut down = FrameTracker::new(false, opts.max_frame, opts.max_message);
    let mut cbuf = vec![0u8; BUF_START];
    let mut bbuf = vec![0u8; BUF_START];
    let (mut client_eof, mut backend_eof) = (false, false);
    let mut last = Instant::now();
    let mut pinged = false;
    let mut moved = Moved::default();
    // One timer for the idle rule and the keepalive ping, reset only when it fires: frames
    // just move `last`, so a busy connection costs no timer work per frame.
    let timer = tokio::time::sleep_until(last + first_due(&opts));
    tokio::pin!(timer);
    let retired = retire;
    tokio::pin!(retired);
    loop {
        tokio::select! {
            r = cr.read(&mut cbuf), if !client_eof => match r {
                Ok(0) => {
                    client_eof = true;
                    let _ = bw.shutdown().await;
                    if backend_eof {
                        return (Ended::Closed, moved);
                    }
                }
                Ok(n) => match pass(&cbuf[..n], &mut up, &mut bw).await {
                    Ok(framed) => {
                        if framed {
                            (last, pinged) = (Instant::now(), false);
                        }
                        moved.up += n as u64;
                        grow(&mut cbuf, n);
                    }
                    Err(Stop::Violation(v)) => {
                        close_both(&mut cw, &mut bw, &up, &down, v.close_code(), "limit exceeded").await;
                        return (Ended::Violation(v), moved);
                    }
                    Err(Stop::Broken) => return (Ended::Broken, moved),
                },
                Err(_) => return (Ended::Broken, moved),
            },
            r = br.read(&mut bbuf), if !backend_eof => match r {
                Ok(0) => {
                    backend_eof = true;
                    let _ = cw.shutdown().await;
                    if client_eof {
                        return (Ended::Closed, moved);
                    }
                }
                Ok(n) => match pass(&bbuf[..n], &mut down, &mut cw).await {
                    Ok(framed) => {
                        if framed {
                            (last, pinged) = (Instant::now(), false);
                        }
                        moved.down += n as u64;
                        grow(&mut bbuf, n);
                    }
                    Err(Stop::Violation(v)) => {
                        close_both(&mut cw, &mut bw, &up, &down, v.close_code(), "limit exceeded").await;
                        return (Ended::Violation(v), moved);
                    }
                    Err(Stop::Broken) => return (Ended::Broken, moved),
                },
                Err(_) => return (Ended::Broken, moved),
            },
            _ = &mut timer => {
                let now = Instant::now();
                if now >= last + opts.idle_timeout {
                    close_both(&mut cw, &mut bw, &up, &down, 1001, "idle timeout").await;
                    return (Ended::Idle, moved);
                }
                let ping_at = last + opts.idle_timeout / 2;
                if opts.keepalive && !pinged && now >= ping_at {
                    // Router keepalive: only between two of the app's frames.
                    if down.at_boundary() && cw.write_all(&ping_frame(b"mar-keepalive", false)).await.is_err() {
                        return (Ended::Broken, moved);
                    }
                    pinged = true;
                }
                let next = if opts.keepalive && !pinged && ping_at > now { ping_at } else { last + opts.idle_timeout };
                timer.as_mut().reset(next);
            }
            _ = &mut retired => {
                close_both(&mut cw, &mut bw, &up, &down, 1012, "service restart").await;
                return (Ended::Restart, moved);
            }
        }
    }
}

enum Stop {
    Violation(Violation),
    Broken,
}

/// Tracks one chunk of one direction and writes it on; says whether a frame passed.
async fn pass<W: AsyncWrite + Unpin>(
    data: &[u8],
    tracker: &mut FrameTracker,
    to: &mut W,
) -> Result<bool, Stop> {
    let seen = tracker.feed(data).map_err(Stop::Violation)?;
    to.write_all(data).await.map_err(|_| Stop::Broken)?;
    Ok(seen.frames > 0)
}

/// When the timer should first fire: the keepalive ping or the idle cut.
fn first_due(opts: &WsOptions) -> Duration {
    if opts.keepalive {
        opts.idle_timeout / 2
    } else {
        opts.idle_timeout
    }
}

/// Sends a Close to each side that sits between frames, then closes the write halves.
async fn close_both<CW, BW>(
    cw: &mut CW,
    bw: &mut BW,
    up: &FrameTracker,
    down: &FrameTracker,
    code: u16,
    reason: &str,
) -> bool
where
    CW: AsyncWrite + Unpin,
    BW: AsyncWrite + Unpin,
{
    let mut ok = true;
    if down.at_boundary() {
        ok &= cw
            .write_all(&close_frame(code, reason, false))
            .await
            .is_ok();
    }
    if up.at_boundary() {
        ok &= bw.write_all(&close_frame(code, reason, true)).await.is_ok();
    }
    let _ = cw.shutdown().await;
    let _ = bw.shutdown().await;
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_util::sync::CancellationToken;

    /// A client and a server WebSocket joined through `relay` over in-memory pipes.
    async fn pair(
        opts: WsOptions,
    ) -> (
        tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
        tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<(Ended, Moved)>,
        CancellationToken,
    ) {
        let (client, relay_client_side) = tokio::io::duplex(64 << 10);
        let (relay_backend_side, backend) = tokio::io::duplex(64 << 10);
        let retire = CancellationToken::new();
        let task = tokio::spawn(relay(
            relay_client_side,
            relay_backend_side,
            opts,
            retire.clone().cancelled_owned(),
        ));
        let c =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let s =
            tokio_tungstenite::WebSocketStream::from_raw_socket(backend, Role::Server, None).await;
        (c, s, task, retire)
    }

    fn opts(idle_ms: u64) -> WsOptions {
        WsOptions {
            idle_timeout: Duration::from_millis(idle_ms),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connection_is_closed_with_1001_at_the_idle_timeout() {
        let (mut c, mut s, task, _) = pair(opts(60_000)).await;
        c.send(Message::text("hi")).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), Message::text("hi"));
        let started = Instant::now();
        let Some(Ok(Message::Close(Some(frame)))) = c.next().await else {
            panic!("no close")
        };
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(frame.reason.as_str(), "idle timeout");
        assert!(started.elapsed() >= Duration::from_secs(59));
        let Some(Ok(Message::Close(Some(frame)))) = s.next().await else {
            panic!("no close to the app")
        };
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(task.await.unwrap().0, Ended::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn app_pings_keep_the_connection() {
        let (mut c, mut s, task, retire) = pair(opts(60_000)).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            s.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
            // The client library answers the ping when it reads it.
            assert!(matches!(c.next().await, Some(Ok(Message::Ping(_)))));
            c.flush().await.unwrap();
            assert!(matches!(s.next().await, Some(Ok(Message::Pong(_)))));
        }
        assert!(!task.is_finished(), "200 s of pinging, still open");
        retire.cancel();
        let Some(Ok(Message::Close(Some(frame)))) = c.next().await else {
            panic!("no close")
        };
        assert_eq!(u16::from(frame.code), 1012);
        assert_eq!(task.await.unwrap().0, Ended::Restart);
    }

    #[tokio::test(start_paused = true)]
    async fn router_keepalive_pings_the_client() {
        let mut o = opts(60_000);
        o.keepalive = true;
        let (mut c, _s, task, _) = pair(o).await;
        for _ in 0..3 {
            let Some(Ok(Message::Ping(p))) = c.next().await else {
                panic!("no ping")
            };
            assert_eq!(p.as_ref(), b"mar-keepalive");
            c.flush().await.unwrap();
        }
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn oversized_message_gets_1009() {
        let mut o = opts(60_000);
        o.max_message = 1000;
        let (mut c, mut s, task, _) = pair(o).await;
        c.send(Message::binary(vec![0u8; 2000])).await.unwrap();
        let Some(Ok(Message::Close(Some(frame)))) = c.next().await else {
            panic!("no close")
        };
        assert_eq!(u16::from(frame.code), 1009);
        assert!(matches!(
            s.next().await,
            Some(Ok(Message::Close(_))) | None | Some(Err(_))
        ));
        assert_eq!(
            task.await.unwrap().0,
            Ended::Violation(Violation::MessageTooLarge)
        );
    }

    #[tokio::test]
    async fn close_handshake_passes_through() {
        let (mut c, mut s, task, _) = pair(opts(60_000)).await;
        c.close(None).await.unwrap();
        assert!(matches!(s.next().await, Some(Ok(Message::Close(_)))));
        // tungstenite answers the close and drops the connection.
        while s.next().await.is_some() {}
        drop(s);
        while c.next().await.is_some() {}
        drop(c);
        assert_eq!(task.await.unwrap().0, Ended::Closed);
    }
}
