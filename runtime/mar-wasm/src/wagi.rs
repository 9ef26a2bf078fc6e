//! Serving a request through a WAGI module: a WASI preview1 command run natively by
//! wasmtime's preview1 implementation (never adapted into a component: modules built with
//! Debian's clang-14 and wasi-libc trap inside the preview1-to-component adapter at their
//! first malloc). The request becomes CGI variables ([`crate::cgi`]) and stdin; what the guest
//! prints is a CGI head, read here, and a body streamed to the client as it comes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mar_http::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use wasmtime::Store;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::cgi;
use crate::limits::MemoryCap;
use crate::log_lines::LogLines;
use crate::wasm_app::{Outcome, Permits, Shared};
use crate::{WasmError, describe};

/// How much of the request body and of the guest's output waits in memory between the guest
/// and the client: past it the writer waits (back-pressure), so neither body is held whole.
const PIPE: usize = 64 * 1024;

/// One module instance's store state.
pub struct ModuleState {
    wasi: WasiP1Ctx,
    cap: MemoryCap,
}

/// The linker of WAGI modules: WASI preview1 only.
pub(crate) fn linker(
    engine: &wasmtime::Engine,
) -> Result<wasmtime::Linker<ModuleState>, WasmError> {
    let mut l = wasmtime::Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut l, |s: &mut ModuleState| &mut s.wasi)
        .map_err(|e| WasmError::Engine(describe(&e)))?;
    Ok(l)
}

/// Serves one request; the caller holds the app's and the pool's slots in `permits`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    pre: wasmtime::InstancePre<ModuleState>,
    req: Request<Body>,
    permits: Permits,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let env = {
        let config: std::collections::BTreeMap<String, String> =
            shared.env.iter().cloned().collect();
        cgi::environment(
            &parts,
            parts.extensions.get::<mar_http::Connection>(),
            &config,
        )
    };
    let (mut stdin_w, stdin_r) = tokio::io::duplex(PIPE);
    let (stdout_w, mut stdout_r) = tokio::io::duplex(PIPE);
    // The body flows into stdin as the guest reads it; a guest that stops reading (or exits)
    // ends the pump, and the router sees the rest of the upload unread.
    shared.host.executor().spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && stdin_w.write_all(&data).await.is_err()
            {
                break;
            }
        }
        let _ = stdin_w.shutdown().await;
    });
    let mut b = WasiCtxBuilder::new();
    b.envs(&env)
        .arg(&shared.name)
        .stdin(AsyncStdinStream::new(stdin_r))
        .stdout(AsyncStdoutStream::new(PIPE, stdout_w))
        .stderr(AsyncStdoutStream::new(
            8192,
            LogLines::new(shared.log.clone()),
        ));
    if let Some(dir) = &shared.files
        && let Err(e) = b.preopened_dir(dir, "/", FsPerms::ReadOnly)
    {
        return shared.failed(Outcome::Trap(format!(
            "cannot open {}: {}",
            dir.display(),
            describe(&e)
        )));
    }
    let mut store = Store::new(
        &shared.host.engine,
        ModuleState {
            wasi: b.build_p1(),
            cap: MemoryCap::new(shared.limits.memory),
        },
    );
    store.limiter(|s| &mut s.cap);
    shared.arm_deadline(&mut store);
    let guest_shared = shared.clone();
    let guest = shared.host.executor().spawn(async move {
        let _permits = permits;
        let t0 = Instant::now();
        let run = tokio::time::timeout(guest_shared.limits.timeout, async {
            let instance = pre.instantiate_async(&mut store).await?;
            guest_shared.stats.instantiated(t0.elapsed(), false);
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        })
        .await;
        let outcome = match run {
            Ok(r) => Outcome::of(r, store.data().cap.exceeded),
            Err(_) => Outcome::Timeout,
        };
        // Dropping the store closes the guest's stdout: the reader sees the end.
        drop(store);
        outcome
    });

    let mut buf = BytesMut::with_capacity(4096);
    let (head_len, body_start) = loop {
        if let Some(end) = cgi::head_end(&buf) {
            break end;
        }
        if buf.len() > cgi::MAX_HEAD {
            guest.abort();
            return shared.failed(Outcome::BadOutput(format!(
                "the CGI response head is over {} KiB",
                cgi::MAX_HEAD / 1024
            )));
        }
        match stdout_r.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            // The guest's stdout closed before a blank line: why is the guest's outcome, or
            // a head that never ended.
            _ => {
                let outcome = match guest.await {
                    Ok(Outcome::Done) if buf.is_empty() => {
                        Outcome::BadOutput("the handler printed nothing".into())
                    }
                    Ok(Outcome::Done) => Outcome::BadOutput(
                        "the CGI response head has no blank line before the body".into(),
                    ),
                    Ok(o) => o,
                    Err(e) => Outcome::Trap(format!("the guest task failed: {e}")),
                };
                return shared.failed(outcome);
            }
        }
    };
    let head = match cgi::parse_head(&buf[..head_len]) {
        Ok(h) => h,
        Err(e) => {
            guest.abort();
            return shared.failed(Outcome::BadOutput(e));
        }
    };
    let first = buf.split_off(body_start).freeze();
    let mut resp = Response::new(mar_http::boxed(CgiBody {
        first: Some(first).filter(|b| !b.is_empty()),
        out: stdout_r,
        guest: Some(guest),
        shared: shared.clone(),
    }));
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    resp
}

/// The body after the CGI head: what was read with the head, then the guest's stdout as it
/// comes; at its end the guest's outcome decides whether the body ends well or with an error
/// (a guest that exits non-zero or traps mid-body must not look like a complete answer).
struct CgiBody {
    first: Option<Bytes>,
    out: DuplexStream,
    guest: Option<JoinHandle<Outcome>>,
    shared: Arc<Shared>,
}

impl http_body::Body for CgiBody {
    type Data = Bytes;
    type Error = mar_http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.guest.is_some() {
            let mut chunk = vec![0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.out).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let n = rb.filled().len();
                    chunk.truncate(n);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))));
                }
                // End of the guest's output (or a broken pipe): its outcome says how it ended.
                Poll::Ready(_) => {}
            }
        }
        let Some(guest) = self.guest.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = match Pin::new(guest).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(o)) => o,
            Poll::Ready(Err(e)) => Outcome::Trap(format!("the guest task failed: {e}")),
        };
        self.guest = None;
        self.shared.finished(&outcome);
        match outcome {
            Outcome::Done => Poll::Ready(None),
            other => Poll::Ready(Some(Err(format!(
                "the handler failed after its response head: {}",
                other.describe(&self.shared.limits)
            )
            .into()))),
        }
    }
}
