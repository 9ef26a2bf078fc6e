//! `mar run`: the client side of `GET /v1/apps/APP/terminal`, a WebSocket whose binary frames
//! carry the terminal's bytes both ways, or without a terminal the process's stdin one way and
//! its stdout and stderr the other (see [`crate::types::TerminalStart`]).

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::types::{RunResult, TerminalControl, TerminalStart};
use crate::{Client, SdkError, Stream, enc};

type Socket = WebSocketStream<Stream>;

/// What the session sends: what the process printed, then how it ended.
#[derive(Debug)]
pub enum TerminalEvent {
    /// Bytes for the user's screen, escape sequences and all; without a terminal, the
    /// process's stdout.
    Output(Bytes),
    /// Without a terminal: bytes of the process's stderr.
    Stderr(Bytes),
    /// The process ended (or could not start); nothing follows.
    Ended(RunResult),
}

/// The half of a session that types and resizes.
pub struct TerminalKeys {
    sink: SplitSink<Socket, Message>,
}

/// The half of a session that reads the screen.
pub struct TerminalScreen {
    stream: SplitStream<Socket>,
    /// Whether the process has a terminal (else each binary frame names its stream).
    tty: bool,
}

impl Client {
    /// Starts `start.command` in `app`'s current release at a terminal of its own.
    pub async fn terminal(
        &self,
        app: &str,
        start: &TerminalStart,
    ) -> Result<(TerminalKeys, TerminalScreen), SdkError> {
        // A plain request first: an unreachable server, a wrong token or an unknown app is
        // reported as for every other command.
        self.app(app).await?;
        let url = match self.base().split_once("://") {
            Some(("http", rest)) => format!("ws://{rest}/v1/apps/{}/terminal", enc(app)),
            Some(("https", rest)) => format!("wss://{rest}/v1/apps/{}/terminal", enc(app)),
            _ => return Err(SdkError::Url(self.base().to_owned())),
        };
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|_| SdkError::Url(url.clone()))?;
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| SdkError::Terminal("the API token is not a valid header".into()))?;
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, bearer);
        let (ws, _) = self
            .trust
            .websocket(req)
            .await
            .map_err(|e| SdkError::Terminal(e.to_string()))?;
        let (mut sink, stream) = ws.split();
        sink.send(Message::text(serde_json::to_string(start)?))
            .await
            .map_err(|e| SdkError::Terminal(e.to_string()))?;
        Ok((
            TerminalKeys { sink },
            TerminalScreen {
                stream,
                tty: start.tty,
            },
        ))
    }
}

impl TerminalKeys {
    /// Types `bytes` (keystrokes, a paste) into the terminal.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<(), SdkError> {
        self.sink
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| SdkError::Terminal(e.to_string()))
    }

    /// Without a terminal: the input has ended, the process's stdin is closed.
    pub async fn end_input(&mut self) -> Result<(), SdkError> {
        let control = serde_json::to_string(&TerminalControl::Eof)?;
        self.sink
            .send(Message::text(control))
            .await
            .map_err(|e| SdkError::Terminal(e.to_string()))
    }

    /// Tells the terminal the user's window is now `cols` × `rows`.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), SdkError> {
        let control = serde_json::to_string(&TerminalControl::Resize { cols, rows })?;
        self.sink
            .send(Message::text(control))
            .await
            .map_err(|e| SdkError::Terminal(e.to_string()))
    }
}

impl TerminalScreen {
    /// The next output, or how the process ended; an error when the session broke off
    /// without saying.
    pub async fn next(&mut self) -> Result<TerminalEvent, SdkError> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Binary(b))) if self.tty => return Ok(TerminalEvent::Output(b)),
                Some(Ok(Message::Binary(b))) => match b.first() {
                    Some(1) => return Ok(TerminalEvent::Output(b.slice(1..))),
                    Some(2) => return Ok(TerminalEvent::Stderr(b.slice(1..))),
                    _ => {
                        return Err(SdkError::Terminal(
                            "the server sent output of no known stream".into(),
                        ));
                    }
                },
                Some(Ok(Message::Text(t))) => {
                    return Ok(TerminalEvent::Ended(serde_json::from_str(&t)?));
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(SdkError::Terminal(
                        "the server closed the session without an exit status".into(),
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(SdkError::Terminal(e.to_string())),
            }
        }
    }
}
