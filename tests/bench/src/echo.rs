//! The WebSocket echo backend used behind every path of the WebSocket benchmark (direct,
//! nginx, mini-MAR): `router-ws ws-echo` listens on 127.0.0.1:$PORT (0 picks a port and
//! prints it) on one current-thread runtime, and sends every data message back, flushing once
//! per batch of messages already received.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The line printed once listening: `ws-echo listening on ADDR`.
pub const READY: &str = "ws-echo listening on ";

/// Serves forever on 127.0.0.1:`port`.
pub fn serve(port: u16) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("{READY}{}", listener.local_addr()?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE: let connections close before accepting more.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            tokio::spawn(echo(stream));
        }
    })
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // tungstenite's default 128 KiB read buffer per connection would make the echo server,
    // not the proxy, the memory story of 10,000 idle connections (and exceed the 512 MiB an
    // app gets under mini-MAR).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if !keep(&msg) {
            if msg.is_close() {
                break;
            }
            continue;
        }
        if ws.feed(msg).await.is_err() {
            return;
        }
        // Echo what has already arrived before flushing once.
        while let Some(Some(Ok(more))) = ws.next().now_or_never() {
            if keep(&more) && ws.feed(more).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn keep(m: &Message) -> bool {
    m.is_binary() || m.is_text()
}

/// A `ws-echo` child process of this executable.
pub struct EchoProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl EchoProcess {
    /// Starts `EXE ws-echo` with `PORT=0` and reads its address.
    pub fn start() -> Self {
        use std::io::BufRead;
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .arg("ws-echo")
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix(READY)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("ws-echo printed {line:?}"));
        Self { child, addr }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
