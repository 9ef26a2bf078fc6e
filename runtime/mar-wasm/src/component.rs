//! Serving a request through a wasi:http component: the store's state (WASI 0.2 with no
//! capability the app was not granted, `wasi:http` with the outbound policy, the memory cap),
//! the linker, and one request's run: the response head is returned as soon as the guest
//! sets it, while the guest goes on streaming the body in its own task under its deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use mar_http::Body;
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::MemoryCap;
use crate::log_lines::LogLines;
use crate::outbound::OutboundPolicy;
use crate::wasm_app::{Outcome, Permits, Shared};
use crate::{WasmError, describe};

/// One component instance's store state.
pub struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    pub(crate) cap: MemoryCap,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The linker of components: all of WASI 0.2 (componentize-py and componentize-js
/// components import cli, filesystem and sockets beside the proxy world) and `wasi:http`.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<ComponentState>, WasmError> {
    let mut l = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l).map_err(|e| WasmError::Engine(describe(&e)))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)
        .map_err(|e| WasmError::Engine(describe(&e)))?;
    Ok(l)
}

/// A fresh store for one of the app's instances: config vars as the environment, stdout and
/// stderr to the app's log, the slug's files read-only if the app asked, nothing else.
pub(crate) fn new_store(shared: &Shared) -> Result<Store<ComponentState>, String> {
    let mut b = WasiCtxBuilder::new();
    b.envs(&shared.env)
        .stdout(AsyncStdoutStream::new(
            8192,
            LogLines::new(shared.log.clone()),
        ))
        .stderr(AsyncStdoutStream::new(
            8192,
            LogLines::new(shared.log.clone()),
        ));
    if let Some(dir) = &shared.files {
        b.preopened_dir(dir, "/", FsPerms::ReadOnly)
            .map_err(|e| format!("cannot open {}: {}", dir.display(), describe(&e)))?;
    }
    let state = ComponentState {
        wasi: b.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: OutboundPolicy {
            allowed: shared.allowed.clone(),
            log: shared.log.clone(),
        },
        cap: MemoryCap::new(shared.limits.memory),
    };
    let mut store = Store::new(&shared.host.engine, state);
    store.limiter(|s| &mut s.cap);
    Ok(store)
}

/// Serves one request; the caller holds the app's and the pool's slots in `permits`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<ComponentState>,
    req: Request<Body>,
    permits: Permits,
) -> Response<Body> {
    let t0 = Instant::now();
    let (mut store, proxy, reused) = match shared.take_idle() {
        Some((store, proxy)) => (store, proxy, true),
        None => {
            let mut store = match new_store(&shared) {
                Ok(s) => s,
                Err(e) => return shared.failed(Outcome::Trap(e)),
            };
            shared.arm_deadline(&mut store);
            match pre.instantiate_async(&mut store).await {
                Ok(proxy) => (store, proxy, false),
                Err(e) => {
                    let exceeded = store.data().cap.exceeded;
                    return shared.failed(Outcome::of(Err(e), exceeded));
                }
            }
        }
    };
    shared.stats.instantiated(t0.elapsed(), reused);
    shared.arm_deadline(&mut store);
    let scheme = match mar_http::Connection::of(&req).map(|c| c.scheme) {
        Some(mar_http::Scheme::Https) => Scheme::Https,
        _ => Scheme::Http,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Set as the guest sets its response: from then on, how its run ends (a trap mid-body, the
    // deadline) is the guest task's to log, as nobody awaits it any more.
    let answered = Arc::new(AtomicBool::new(false));
    // The router notes a body that failed for the client's reason (too large, stalled) and
    // answers with its own page; the guest sees only that its body broke off.
    let req =
        req.map(|b| b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))));
    let resources = {
        let mut http = store.data_mut().http();
        http.new_incoming_request(scheme, req).and_then(|incoming| {
            let answered = answered.clone();
            let out = http.new_response_outparam_from_callback(move |r| {
                answered.store(true, Ordering::Release);
                let _ = tx.send(r);
            })?;
            Ok((incoming, out))
        })
    };
    let (incoming, out) = match resources {
        Ok(r) => r,
        Err(e) => return shared.failed(Outcome::Trap(describe(&e))),
    };
    let guest_shared = shared.clone();
    let guest = shared.host.executor().spawn(async move {
        let _permits = permits;
        let timeout = guest_shared.limits.timeout;
        let run = tokio::time::timeout(
            timeout,
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out),
        )
        .await;
        let outcome = match run {
            Ok(r) => Outcome::of(r, store.data().cap.exceeded),
            Err(_) => Outcome::Timeout,
        };
        if matches!(outcome, Outcome::Done) && guest_shared.limits.reuse {
            guest_shared.put_idle(store, proxy);
        }
        if answered.load(Ordering::Acquire) {
            guest_shared.finished(&outcome);
        }
        outcome
    });
    match rx.await {
        Ok(Ok(resp)) => {
            // The guest task goes on (streaming the body) and logs how it ends.
            drop(guest);
            resp.map(|b| mar_http::boxed(b.map_err(|e| mar_http::BoxError::from(format!("{e:?}")))))
        }
        Ok(Err(code)) => {
            shared.log_line(&format!(
                "the handler answered with the error {code:?} instead of a response"
            ));
            shared.stats.failed();
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error\n",
            )
        }
        Err(_) => match guest.await {
            Ok(Outcome::Done) => shared.failed(Outcome::Trap(
                "the handler returned without setting a response".into(),
            )),
            Ok(outcome) => shared.failed(outcome),
            Err(e) => shared.failed(Outcome::Trap(format!("the guest task failed: {e}"))),
        },
    }
}

/// A small text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(mar_http::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The proxy type, for the idle list.
pub(crate) type Instance = (Store<ComponentState>, Proxy);
