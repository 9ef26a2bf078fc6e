//! WebAssembly releases. After a build that made a WASM app (the wasm buildpack took part, or
//! `app.json` has a `wasm` section), the module is read from the built tree (never through a
//! symlink), validated, its interface found and precompiled, and root's copies of module and
//! artifact are kept in `apps/APP/wasm/`, out of the app's reach, before the release exists.
//! A release that carries them is served by an in-process handler (`Workload::Handler`),
//! loaded from the artifact without compiling again: at a deploy, a config change, a
//! rollback, and a restart of `mar serve`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::private_files::write_private;
use mar_build::Output;
use mar_core::AppName;
use mar_router::InProcessTarget;
use mar_wasm::{AllowedHosts, AppSpec, Host, HostOptions, Interface, LogSink, WasmApp};
use serde::{Deserialize, Serialize};

use super::{Apps, DeployError};

/// The largest module a push may carry (a Python component is about 20 MB).
const MAX_MODULE: u64 = 256 << 20;

/// `app.json`'s `wasm` section: what the buildpack builds and what the runtime serves. The
/// buildpack reads `module`, `build` and `source`; the runtime all of it, strictly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// The module, relative to the app (default: the only `*.wasm` at its root, else
    /// `app.wasm`).
    #[serde(default)]
    module: Option<String>,
    /// `python` or `c`: the buildpack builds the module from `source`. (Only the buildpack
    /// reads these two; they are parsed here so that a misspelt key fails the push.)
    #[serde(default)]
    #[allow(dead_code)]
    build: Option<String>,
    /// What to build from.
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    /// Hosts components may call (`https://api.example.com`, `https://*.example.com`).
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    /// A directory of the app that guests may read, mounted at `/`.
    #[serde(default)]
    files: Option<String>,
}

/// What a WASM release stores (as JSON in the release's `wasm` column).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WasmRelease {
    /// Root's copy of the module: `apps/APP/wasm/ID.wasm`.
    pub module: String,
    /// `wasi-http` or `wagi`.
    pub interface: String,
    /// The run directory, whose `files` guests may read.
    pub run_dir: String,
    /// See [`Manifest::files`].
    pub files: Option<String>,
    /// See [`Manifest::allowed_outbound_hosts`].
    pub allowed_outbound_hosts: Vec<String>,
}

impl WasmRelease {
    /// The release's WASM part, if it is a WASM release.
    pub(crate) fn of(release_wasm: Option<&str>) -> Result<Option<Self>, String> {
        release_wasm
            .map(|j| serde_json::from_str(j).map_err(|e| format!("bad WASM release record: {e}")))
            .transpose()
    }

    /// Its interface.
    pub(crate) fn interface(&self) -> Result<Interface, String> {
        Interface::parse(&self.interface)
            .ok_or_else(|| format!("unknown WASM interface {:?}", self.interface))
    }
}

/// A WASM release being served.
#[derive(Clone)]
pub(crate) struct WasmRunning {
    /// The handler (for `mar ps`).
    pub app: WasmApp,
    /// The router's target, counting requests in flight.
    pub target: InProcessTarget,
}

/// Reads `app.json`'s `wasm` section, if any.
pub(crate) fn manifest(build_dir: &Path) -> Result<Option<Manifest>, DeployError> {
    let Some(text) = mar_build::read_pushed(build_dir, "app.json")
        .map_err(|e| DeployError::Invalid(e.to_string()))?
    else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DeployError::Invalid(format!("app.json is not valid JSON: {e}")))?;
    match json.get("wasm") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(w) => serde_json::from_value(w.clone())
            .map(Some)
            .map_err(|e| DeployError::Invalid(format!("app.json: wasm: {e}"))),
    }
}

/// A relative path inside the app: no `..`, not absolute, not empty.
fn inside(what: &str, p: &str) -> Result<(), DeployError> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(DeployError::Invalid(format!(
            "app.json: wasm.{what} must be a path inside the app, not {p:?}"
        )));
    }
    Ok(())
}

impl Apps {
    /// The server's WebAssembly host, made at the first use (a server without WASM apps
    /// reserves nothing for them).
    fn wasm_host(&self) -> Result<Arc<Host>, String> {
        let mut host = self.wasm_host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = host.as_ref() {
            return Ok(h.clone());
        }
        let h = Host::new(HostOptions::default()).map_err(|e| e.to_string())?;
        *host = Some(h.clone());
        Ok(h)
    }

    /// After a build: when it made a WASM app, compiles its module and keeps root's copies;
    /// returns the release's `wasm` record, or `None` for a process app.
    pub(super) async fn prepare_wasm(
        &self,
        app: &AppName,
        build_dir: &Path,
        run_dir: &Path,
        id: &str,
        buildpacks: &[String],
        out: &Output,
    ) -> Result<Option<String>, DeployError> {
        let manifest = manifest(build_dir)?;
        let by_buildpack = buildpacks.iter().any(|b| b == mar_build::WASM_BUILDPACK);
        let Some(manifest) = manifest.or_else(|| by_buildpack.then(Manifest::default)) else {
            return Ok(None);
        };
        let module = match &manifest.module {
            Some(m) => m.clone(),
            None => only_wasm_at_root(build_dir).unwrap_or_else(|| "app.wasm".to_owned()),
        };
        inside("module", &module)?;
        if let Some(f) = &manifest.files {
            inside("files", f)?;
        }
        AllowedHosts::parse(&manifest.allowed_outbound_hosts)
            .map_err(|e| DeployError::Invalid(format!("app.json: wasm.{e}")))?;
        let bytes = mar_build::read_pushed_bytes(build_dir, &module, MAX_MODULE)
            .map_err(|e| DeployError::Invalid(e.to_string()))?
            .ok_or_else(|| {
                DeployError::Invalid(format!("the WebAssembly module {module} is not in the app"))
            })?;
        out.step(format!(
            "Compiling the WebAssembly module {module} ({})",
            mar_build::human_size(bytes.len() as u64)
        ));
        let host = self.wasm_host().map_err(DeployError::Invalid)?;
        let t0 = Instant::now();
        let compiled = {
            let host = host.clone();
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || host.compile(&bytes))
                .await
                .map_err(|e| DeployError::Invalid(format!("compiling failed: {e}")))?
        }
        .map_err(|e| DeployError::Invalid(format!("{module} cannot be served: {e}")))?;
        out.detail(format!(
            "{}, compiled in {:.1}s",
            compiled.interface.describe(),
            t0.elapsed().as_secs_f64()
        ));
        let dir = self.paths.wasm_dir(app);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let copy = dir.join(format!("{id}.wasm"));
        write_private(&copy, &bytes)?;
        write_private(&artifact_path(&copy, &host), &compiled.artifact)?;
        let record = WasmRelease {
            module: copy.to_string_lossy().into_owned(),
            interface: compiled.interface.as_str().to_owned(),
            run_dir: run_dir.to_string_lossy().into_owned(),
            files: manifest.files,
            allowed_outbound_hosts: manifest.allowed_outbound_hosts,
        };
        serde_json::to_string(&record)
            .map(Some)
            .map_err(|e| DeployError::Invalid(e.to_string()))
    }

    /// Removes the module and artifacts of build `id` (a failed deploy's, a pruned slug's).
    pub(super) fn forget_wasm(&self, app: &AppName, id: &str) {
        let Ok(entries) = std::fs::read_dir(self.paths.wasm_dir(app)) else {
            return;
        };
        let prefix = format!("{id}.");
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Makes the handler of a WASM release from its stored artifact, compiling the stored
    /// module again only when the artifact is missing or was built by another engine.
    pub(super) async fn load_wasm(
        &self,
        app: &AppName,
        config: &BTreeMap<String, String>,
        wasm: &WasmRelease,
    ) -> Result<WasmRunning, String> {
        let host = self.wasm_host()?;
        let interface = wasm.interface()?;
        let module = PathBuf::from(&wasm.module);
        let artifact = artifact_path(&module, &host);
        let loaded = {
            let host = host.clone();
            let app_name = app.clone();
            let logs = self.logs.clone();
            tokio::task::spawn_blocking(move || match host.load(&artifact, interface) {
                Ok(l) => Ok(l),
                Err(first) => {
                    logs.append(
                        &app_name,
                        "mar[api]",
                        &format!("Compiling the WebAssembly module again ({first})"),
                    );
                    let bytes =
                        std::fs::read(&module).map_err(|e| format!("{}: {e}", module.display()))?;
                    let compiled = host.compile(&bytes).map_err(|e| e.to_string())?;
                    write_private(&artifact, &compiled.artifact)
                        .map_err(|e| format!("{}: {e}", artifact.display()))?;
                    host.load(&artifact, interface).map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(|e| e.to_string())??
        };
        let files = match &wasm.files {
            Some(f) => Some(
                mar_build::open_pushed_dir(Path::new(&wasm.run_dir), f)
                    .map_err(|e| format!("wasm.files: {e}"))?,
            ),
            None => None,
        };
        let logs = self.logs.clone();
        let name = app.clone();
        let log: LogSink = Arc::new(move |line: &str| logs.append(&name, "app[wasm]", line));
        let settings = self.settings(config);
        let handler = WasmApp::new(
            &host,
            loaded,
            AppSpec {
                name: app.to_string(),
                env: config.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                limits: settings.wasm,
                log,
                allowed_outbound_hosts: AllowedHosts::parse(&wasm.allowed_outbound_hosts)?,
                files,
            },
        );
        Ok(WasmRunning {
            target: InProcessTarget::new("wasm", Arc::new(handler.clone())),
            app: handler,
        })
    }
}

/// `ID.KEY.cwasm` beside `ID.wasm`.
fn artifact_path(module: &Path, host: &Host) -> PathBuf {
    module.with_extension(format!("{}.cwasm", host.artifact_key()))
}

/// The name of the only `*.wasm` at the root of the tree, if there is exactly one.
fn only_wasm_at_root(dir: &Path) -> Option<String> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_app() {
        for ok in ["app.wasm", "build/handler.wasm"] {
            assert!(inside("module", ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x.wasm", "a/../../b", "./x"] {
            assert!(inside("module", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_manifest_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("app.json"),
            r#"{"wasm": {"module": "a.wasm", "allowed_outbound_host": []}}"#,
        )
        .unwrap();
        let e = manifest(d.path()).unwrap_err().to_string();
        assert!(e.contains("allowed_outbound_host"), "{e}");
        std::fs::write(d.path().join("app.json"), r#"{"healthchecks": {}}"#).unwrap();
        assert!(manifest(d.path()).unwrap().is_none());
    }
}
