//! `GET /v1/apps/APP/terminal`: `mar run` as a WebSocket. The first text frame names the
//! command and the terminal ([`TerminalStart`]); after it, binary frames carry the terminal's
//! bytes both ways and a client's text frame resizes it ([`TerminalControl`]). Without a
//! terminal (`"tty": false`: `mar run` in a pipe or a script) the client's binary frames are the
//! process's stdin, `"eof"` closes it, and the server's binary frames are its stdout and stderr,
//! each marked by its first byte. The server's last text frame is the [`RunResult`]. Hanging up
//! kills the process, as with `POST /v1/apps/APP/run`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use http::header;
use mar_sdk::types::{RunResult, TerminalControl, TerminalStart};
use mar_supervisor::attached::{AttachedInput, AttachedOutput};
use mar_supervisor::terminal::{TerminalInput, Tty, WindowSize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Admin, ApiError, ApiResult, Platform, existing};

/// Keystrokes accepted but not yet written to the terminal (a paste into a program that does
/// not read): past this the client's frames are not read, and TCP holds the rest back.
const MAX_PENDING_INPUT: usize = 1 << 20;
/// Inputs handed to the process but not yet written: with [`MAX_PENDING_INPUT`] and frames of
/// at most [`MAX_FRAME`], a session holds at most about 5 MiB of input.
const INPUT_QUEUE: usize = 4;
/// Longest a frame to the client may wait for it to read: a client that stops reading for
/// good is let go (pings cannot tell, as they wait behind the same frame).
const SEND_WITHIN: Duration = Duration::from_secs(120);
/// Largest frame a client may send (a paste arrives in one).
const MAX_FRAME: usize = 1 << 20;
/// How long the client has to send its first frame.
const START_WITHIN: Duration = Duration::from_secs(10);
/// Pings keep the session's connection alive through proxies that cut idle ones (the router's
/// own rule is 60 s), while the user reads or thinks.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Opens a terminal session for `mar run` (see the module's doc).
pub(super) async fn open_terminal(
    _: Admin,
    State(p): State<Arc<Platform>>,
    Path(app): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let app = existing(&p, &app)?;
    let asks_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let (true, Some(key)) = (asks_websocket, key) else {
        return Err(ApiError::bad_request(
            "this endpoint is a WebSocket (as `mar run` opens it at a terminal); without one, use POST /v1/apps/APP/run",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let ws = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        session(p, app, ws).await;
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(mar_http::switching_protocols(&accept).map(axum::body::Body::new))
}

/// One terminal session, from the first frame to the result.
async fn session<S>(p: Arc<Platform>, app: mar_core::AppName, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let start = match tokio::time::timeout(START_WITHIN, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<TerminalStart>(&t).map_err(|e| {
            format!("the first frame must be {{\"command\", \"cols\", \"rows\"}}: {e}")
        }),
        Ok(Some(Ok(_))) => Err("the first frame must be a text frame naming the command".into()),
        _ => return,
    };
    let start = match start {
        Ok(s) if s.command.trim().is_empty() => Err("the command is empty".to_owned()),
        other => other,
    };
    let start = match start {
        Ok(s) => s,
        Err(e) => {
            let result = RunResult {
                exit_code: None,
                error: Some(e),
            };
            finish(&mut sink, &mut stream, result).await;
            return;
        }
    };
    let cancel = p.shutdown.child_token();
    let ended = if start.tty {
        let (input, keys) = mpsc::channel(INPUT_QUEUE);
        let (screen, output) = mpsc::channel::<Vec<u8>>(16);
        let tty = Tty {
            size: WindowSize {
                cols: start.cols,
                rows: start.rows,
            },
            term: start.term,
        };
        let run = {
            let (p, cancel) = (p.clone(), cancel.clone());
            tokio::spawn(async move {
                p.apps
                    .run_at_terminal(&app, &start.command, tty, keys, screen, cancel)
                    .await
            })
        };
        let relay = Relay {
            frame: |bytes: Vec<u8>| bytes,
            data: TerminalInput::Keys,
            control: |c| match c {
                TerminalControl::Resize { cols, rows } => {
                    Some(TerminalInput::Resize(WindowSize { cols, rows }))
                }
                // A terminal's end of input is the user's Ctrl-D, sent as a key.
                TerminalControl::Eof => None,
            },
            weight: |i: &TerminalInput| match i {
                TerminalInput::Keys(k) => k.len(),
                TerminalInput::Resize(_) => std::mem::size_of::<TerminalInput>(),
            },
        };
        relay
            .run(&mut sink, &mut stream, input, output, run, &cancel)
            .await
    } else {
        let (input, stdin) = mpsc::channel(INPUT_QUEUE);
        let (outputs, output) = mpsc::channel::<AttachedOutput>(16);
        let run = {
            let (p, cancel) = (p.clone(), cancel.clone());
            tokio::spawn(async move {
                p.apps
                    .run_attached(&app, &start.command, stdin, outputs, cancel)
                    .await
            })
        };
        let relay = Relay {
            // The stream a chunk came from, then the chunk.
            frame: |o: AttachedOutput| {
                let (channel, mut bytes) = match o {
                    AttachedOutput::Stdout(b) => (STDOUT, b),
                    AttachedOutput::Stderr(b) => (STDERR, b),
                };
                bytes.insert(0, channel);
                bytes
            },
            data: AttachedInput::Data,
            control: |c| match c {
                TerminalControl::Eof => Some(AttachedInput::End),
                TerminalControl::Resize { .. } => None,
            },
            weight: |i: &AttachedInput| match i {
                AttachedInput::Data(d) => d.len(),
                AttachedInput::End => std::mem::size_of::<AttachedInput>(),
            },
        };
        relay
            .run(&mut sink, &mut stream, input, output, run, &cancel)
            .await
    };
    if let Some(result) = ended {
        finish(&mut sink, &mut stream, result).await;
    }
}

/// How a one-off's run ended, as the session's result says it.
fn result_of(
    done: Result<Result<i32, crate::apps::DeployError>, tokio::task::JoinError>,
) -> RunResult {
    match done {
        Ok(Ok(code)) => RunResult {
            exit_code: Some(code),
            error: None,
        },
        Ok(Err(e)) => RunResult {
            exit_code: None,
            error: Some(e.to_string()),
        },
        Err(_) => RunResult {
            exit_code: None,
            error: Some("the terminal session failed".to_owned()),
        },
    }
}

/// The first byte of a binary frame from a session without a terminal: which stream the rest
/// came from.
const STDOUT: u8 = 1;
/// See [`STDOUT`].
const STDERR: u8 = 2;

/// How a session's frames map to the process's input and output: with a terminal, keystrokes
/// and resizes in, the terminal's bytes out; without one, stdin and its end in, stdout and
/// stderr out, each chunk marked with its stream.
struct Relay<I, O> {
    /// An output chunk as a binary frame's payload.
    frame: fn(O) -> Vec<u8>,
    /// A client's binary frame as input.
    data: fn(Vec<u8>) -> I,
    /// A client's control message as input, if it means anything here.
    control: fn(TerminalControl) -> Option<I>,
    /// What a pending input counts against [`MAX_PENDING_INPUT`].
    weight: fn(&I) -> usize,
}

impl<I, O> Relay<I, O> {
    /// Relays until the process has exited (`run` is done) and all it wrote is sent, input
    /// going in meanwhile even after its output has closed; the result to send, or `None` when
    /// the client went away (the process is then cancelled).
    async fn run<K, St>(
        &self,
        sink: &mut K,
        stream: &mut St,
        input: mpsc::Sender<I>,
        mut output: mpsc::Receiver<O>,
        mut run: tokio::task::JoinHandle<Result<i32, crate::apps::DeployError>>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<RunResult>
    where
        K: futures_util::Sink<Message> + Unpin,
        St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        let mut pending: VecDeque<I> = VecDeque::new();
        let mut pending_bytes = 0usize;
        let mut client_gone = false;
        let mut output_open = true;
        let mut outcome: Option<RunResult> = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        while output_open || outcome.is_none() {
            tokio::select! {
                chunk = output.recv(), if output_open => match chunk {
                    Some(o) if !client_gone => {
                        let frame = Message::Binary((self.frame)(o).into());
                        if !matches!(tokio::time::timeout(SEND_WITHIN, sink.send(frame)).await, Ok(Ok(()))) {
                            client_gone = true;
                            cancel.cancel();
                        }
                    }
                    Some(_) => {}
                    // Nothing more will be written: the process closed its output (it may
                    // still be reading its input) or has exited.
                    None => output_open = false,
                },
                done = &mut run, if outcome.is_none() => {
                    outcome = Some(result_of(done));
                    // What was sent for a process that has exited has nowhere to go.
                    pending.clear();
                    pending_bytes = 0;
                }
                frame = stream.next(), if outcome.is_none() && !client_gone && pending_bytes < MAX_PENDING_INPUT => {
                    let i = match frame {
                        Some(Ok(Message::Binary(b))) => Some((self.data)(b.to_vec())),
                        Some(Ok(Message::Text(t))) => serde_json::from_str(&t)
                            .ok()
                            .and_then(self.control),
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            client_gone = true;
                            cancel.cancel();
                            None
                        }
                        Some(Ok(_)) => None,
                    };
                    if let Some(i) = i {
                        pending_bytes += (self.weight)(&i);
                        pending.push_back(i);
                    }
                }
                permit = input.reserve(), if outcome.is_none() && !pending.is_empty() => match (permit, pending.pop_front()) {
                    (Ok(permit), Some(i)) => {
                        pending_bytes -= (self.weight)(&i);
                        permit.send(i);
                    }
                    // The process's input is gone: what was sent has nowhere to go.
                    _ => {
                        pending.clear();
                        pending_bytes = 0;
                    }
                },
                _ = ping.tick(), if !client_gone => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        client_gone = true;
                        cancel.cancel();
                    }
                }
            }
        }
        if client_gone { None } else { outcome }
    }
}

/// Sends the result and closes the WebSocket as its protocol says: the Close, then what the
/// client still sends (input it had on its way) read and dropped until its own Close, so the
/// connection ends cleanly rather than reset with unread data, which would cost the client
/// the result. A client that does neither within a few seconds is let go.
async fn finish<K, St>(sink: &mut K, stream: &mut St, result: RunResult)
where
    K: futures_util::Sink<Message> + Unpin,
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let text = serde_json::to_string(&result).unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sink.send(Message::text(text)).await;
        let _ = sink.close().await;
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
}
