//! `GET /v1/apps/APP/terminal`: `mar run` typed at a terminal, as a WebSocket. The first text
//! frame names the command and the terminal ([`TerminalStart`]); after it, binary frames carry
//! the terminal's bytes both ways and a client's text frame resizes it ([`TerminalControl`]);
//! the server's last text frame is the [`RunResult`]. Hanging up kills the process, as with
//! `POST /v1/apps/APP/run`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use http::header;
use mar_sdk::types::{RunResult, TerminalControl, TerminalStart};
use mar_supervisor::terminal::{TerminalInput, Tty, WindowSize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Admin, ApiError, ApiResult, Platform, existing};

/// Keystrokes accepted but not yet written to the terminal (a paste into a program that does
/// not read): past this the client's frames are not read, and TCP holds the rest back.
const MAX_PENDING_INPUT: usize = 1 << 20;
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
            finish(&mut sink, result).await;
            return;
        }
    };
    let (input, keys) = mpsc::channel(64);
    let (screen, mut output) = mpsc::channel::<Vec<u8>>(16);
    let cancel = p.shutdown.child_token();
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
    let mut pending: VecDeque<TerminalInput> = VecDeque::new();
    let mut pending_bytes = 0usize;
    let mut client_gone = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(bytes) if !client_gone => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        client_gone = true;
                        cancel.cancel();
                    }
                }
                Some(_) => {}
                // The process has exited and its terminal is drained.
                None => break,
            },
            frame = stream.next(), if !client_gone && pending_bytes < MAX_PENDING_INPUT => {
                match frame {
                    Some(Ok(Message::Binary(b))) => {
                        let keys = TerminalInput::Keys(b.to_vec());
                        pending_bytes += weight(&keys);
                        pending.push_back(keys);
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(TerminalControl::Resize { cols, rows }) = serde_json::from_str(&t) {
                            let resize = TerminalInput::Resize(WindowSize { cols, rows });
                            pending_bytes += weight(&resize);
                            pending.push_back(resize);
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        client_gone = true;
                        cancel.cancel();
                    }
                    Some(Ok(_)) => {}
                }
            }
            permit = input.reserve(), if !pending.is_empty() => match (permit, pending.pop_front()) {
                (Ok(permit), Some(i)) => {
                    pending_bytes -= weight(&i);
                    permit.send(i);
                }
                // The terminal is gone: what was typed has nowhere to go.
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
    let result = match run.await {
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
    };
    if !client_gone {
        finish(&mut sink, result).await;
    }
}

/// What a pending input counts against [`MAX_PENDING_INPUT`]: its bytes, or for a resize what
/// it takes in memory (so a flood of resizes is bounded too).
fn weight(i: &TerminalInput) -> usize {
    match i {
        TerminalInput::Keys(k) => k.len(),
        TerminalInput::Resize(_) => std::mem::size_of::<TerminalInput>(),
    }
}

/// Sends the result and closes, giving a client that does not read a few seconds.
async fn finish<K>(sink: &mut K, result: RunResult)
where
    K: futures_util::Sink<Message> + Unpin,
{
    let text = serde_json::to_string(&result).unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sink.send(Message::text(text)).await;
        let _ = sink.close().await;
    })
    .await;
}
