//! One `Host` per server: the wasmtime `Engine` (epoch interruption; the pooling allocator
//! with copy-on-write memory images, or on-demand allocation where the address space cannot
//! be reserved), the epoch ticker, the two linkers, the executor guests run on, and the pool's
//! slots that every app's requests share.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::artifact::{Compiled, Interface, Kind, inspect, is_incoming_handler};
use crate::component::ComponentState;
use crate::wagi::ModuleState;
use crate::{WasmError, describe};

/// How often the epoch advances: the granularity of deadlines, and how often a computing
/// guest yields its executor thread to others.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The host's sizes.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Instances that may run requests at once, over all apps; requests past it wait for a
    /// slot.
    pub pool_instances: u32,
    /// Instances that may wait idle for reuse at once, over all apps (apps that opted into
    /// instance reuse); past it a finished instance is dropped instead of kept. The pool holds
    /// both, so an idle instance never takes a running request's place.
    pub idle_instances: u32,
    /// The most linear memory one instance may ever have, the ceiling of every app's cap.
    pub max_instance_memory: usize,
    /// Threads of the executor guests run on.
    pub executor_threads: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            pool_instances: 256,
            idle_instances: 64,
            max_instance_memory: 1 << 30,
            executor_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// A program ready to instantiate: one release's `InstancePre`.
#[derive(Clone)]
pub enum Loaded {
    /// A wasi:http component.
    Component(ProxyPre<ComponentState>),
    /// A WAGI command module.
    Module(wasmtime::InstancePre<ModuleState>),
}

impl Loaded {
    /// Its interface.
    pub fn interface(&self) -> Interface {
        match self {
            Loaded::Component(_) => Interface::WasiHttp,
            Loaded::Module(_) => Interface::Wagi,
        }
    }
}

/// The WebAssembly host of one server.
pub struct Host {
    pub(crate) engine: Engine,
    component_linker: Linker<ComponentState>,
    module_linker: wasmtime::Linker<ModuleState>,
    /// Owned only to be shut down when the host goes; `executor` is its handle.
    runtime: Option<tokio::runtime::Runtime>,
    executor: tokio::runtime::Handle,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) idle: Arc<Semaphore>,
    pub(crate) options: HostOptions,
    pooling: bool,
}

impl Host {
    /// Sets up the engine (pooling if the host allows it), the linkers, the executor and the
    /// epoch ticker, which stops when the engine is gone.
    pub fn new(options: HostOptions) -> Result<Arc<Self>, WasmError> {
        let (engine, pooling) = match Engine::new(&config(&options, true)) {
            Ok(e) => (e, true),
            Err(pooled) => {
                tracing::warn!(
                    "WebAssembly: the pooling allocator is unavailable ({}); instances are allocated on demand",
                    describe(&pooled)
                );
                let e = Engine::new(&config(&options, false))
                    .map_err(|e| WasmError::Engine(describe(&e)))?;
                (e, false)
            }
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("mar-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let component_linker = crate::component::linker(&engine)?;
        let module_linker = crate::wagi::linker(&engine)?;
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.executor_threads.max(1))
            .thread_name("mar-wasm")
            .enable_all()
            .build()
            .map_err(|e| WasmError::Engine(format!("cannot start the executor: {e}")))?;
        Ok(Arc::new(Self {
            engine,
            component_linker,
            module_linker,
            executor: executor.handle().clone(),
            runtime: Some(executor),
            slots: Arc::new(Semaphore::new(options.pool_instances as usize)),
            idle: Arc::new(Semaphore::new(options.idle_instances as usize)),
            options,
            pooling,
        }))
    }

    /// Whether instances come from the pooling allocator (else on demand).
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The engine's precompile compatibility hash, as hex: part of an artifact's name, so an
    /// artifact built by another engine (another mini-MAR version, other CPU features) is
    /// never looked for, and the binary is compiled again.
    pub fn artifact_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// Validates a binary, finds its interface, checks that mini-MAR can link it, and
    /// precompiles it. Compiling blocks for a while (seconds for a large component): call it
    /// off any event loop.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, WasmError> {
        let kind = inspect(bytes).map_err(WasmError::NotWasm)?;
        match kind {
            Kind::Component => {
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| WasmError::Invalid(describe(&e)))?;
                let ty = c.component_type();
                let exports: Vec<String> = ty
                    .exports(&self.engine)
                    .map(|(name, _)| name.to_owned())
                    .collect();
                if !exports.iter().any(|e| is_incoming_handler(e)) {
                    return Err(WasmError::Unsupported(format!(
                        "a component that does not export wasi:http/incoming-handler@0.2 (it exports: {}); mini-MAR serves wasi:http proxy components and WAGI command modules",
                        if exports.is_empty() {
                            "nothing".to_owned()
                        } else {
                            exports.join(", ")
                        }
                    )));
                }
                self.prepare_component(&c)?;
                let artifact = c.serialize().map_err(|e| WasmError::Engine(describe(&e)))?;
                Ok(Compiled {
                    interface: Interface::WasiHttp,
                    artifact,
                })
            }
            Kind::Module => {
                let m = Module::new(&self.engine, bytes)
                    .map_err(|e| WasmError::Invalid(describe(&e)))?;
                let starts = m.get_export("_start").is_some_and(|e| e.func().is_some());
                if !starts {
                    return Err(WasmError::Unsupported(
                        "a core module without a `_start` function: mini-MAR serves core modules as WAGI handlers, which must be WASI preview1 commands (build with a command entry point, e.g. clang --target=wasm32-wasi with a main)".into(),
                    ));
                }
                self.prepare_module(&m)?;
                let artifact = m.serialize().map_err(|e| WasmError::Engine(describe(&e)))?;
                Ok(Compiled {
                    interface: Interface::Wagi,
                    artifact,
                })
            }
        }
    }

    fn prepare_component(&self, c: &Component) -> Result<Loaded, WasmError> {
        let pre = self
            .component_linker
            .instantiate_pre(c)
            .map_err(|e| WasmError::Link(describe(&e)))?;
        let pre = ProxyPre::new(pre).map_err(|e| WasmError::Link(describe(&e)))?;
        Ok(Loaded::Component(pre))
    }

    fn prepare_module(&self, m: &Module) -> Result<Loaded, WasmError> {
        let pre = self
            .module_linker
            .instantiate_pre(m)
            .map_err(|e| WasmError::Link(describe(&e)))?;
        Ok(Loaded::Module(pre))
    }

    /// Loads a precompiled artifact written by [`Host::compile`] (see the trust note in
    /// [`crate::artifact`]) and prepares its `InstancePre`. Fails, rather than compile, when
    /// the artifact was built by another engine.
    pub fn load(&self, artifact: &Path, interface: Interface) -> Result<Loaded, WasmError> {
        let engine_error = |e: wasmtime::Error| WasmError::Io {
            path: artifact.display().to_string(),
            source: std::io::Error::other(describe(&e)),
        };
        match interface {
            Interface::WasiHttp => {
                let c = crate::artifact::deserialize_component(&self.engine, artifact)
                    .map_err(engine_error)?;
                self.prepare_component(&c)
            }
            Interface::Wagi => {
                let m = crate::artifact::deserialize_module(&self.engine, artifact)
                    .map_err(engine_error)?;
                self.prepare_module(&m)
            }
        }
    }

    /// The executor guests run on.
    pub(crate) fn executor(&self) -> &tokio::runtime::Handle {
        &self.executor
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A runtime dropped inside another runtime's task panics; let its threads go instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The engine's configuration; `pooled` picks the pooling allocator.
fn config(options: &HostOptions, pooled: bool) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.memory_init_cow(true);
    c.parallel_compilation(true);
    if pooled {
        let n = options
            .pool_instances
            .max(1)
            .saturating_add(options.idle_instances);
        let mut p = PoolingAllocationConfig::default();
        // A component made by componentize-py has a dozen or more core instances, and
        // several memories and tables; room for that many per component instance.
        p.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(4))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .table_elements(100_000)
            .max_memory_size(options.max_instance_memory);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}
