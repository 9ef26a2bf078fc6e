//! The app lifecycle: deploys (build → slug → boot → release → switch), config changes,
//! bringing apps back at start, and stopping everything at shutdown.
//!
//! Traffic only moves once every new web instance accepts connections; a deploy that fails
//! at any step leaves the previous release serving. One deploy per app runs at a time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mar_build::{BuildSpec, Output};
use mar_core::AppName;
use mar_logs::Logs;
use mar_router::{AppTarget, RouteTable, Unavailable, Upstream};
use mar_store::{NewRelease, Release, Store, StoreError};
use mar_supervisor::{Event, Instance, ProcessSpec, State};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::paths::Paths;

/// Why a deploy or config change failed; each message is for the user.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another deploy of the same app is running.
    #[error("another deploy of {0} is in progress; try again when it has finished")]
    Busy(String),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] mar_build::BuildError),
    /// New instances did not come up.
    #[error("{0}")]
    Boot(String),
    /// State error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system error.
    #[error("deploy I/O: {0}")]
    Io(#[from] std::io::Error),
}

struct Running {
    release: i64,
    instances: Vec<Instance>,
}

/// All apps' processes and deploys. Shared behind an `Arc`.
pub struct Apps {
    cfg: Arc<Config>,
    paths: Paths,
    store: Arc<Store>,
    logs: Arc<Logs>,
    routes: Arc<RouteTable>,
    running: Mutex<HashMap<AppName, Running>>,
    deploying: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    events: mpsc::UnboundedSender<Event>,
    run_as: Option<(u32, u32)>,
}

/// A pushed tree, unpacked and ready to build.
pub struct Source {
    /// The unpacked tree; the build happens in place.
    pub build_dir: PathBuf,
    /// Scratch space for the build.
    pub work_dir: PathBuf,
    /// The pushed commit.
    pub commit: String,
    /// How long receiving the tree took (for the timings line).
    pub received: Duration,
}

/// What a successful deploy reports.
pub struct Deployed {
    /// The new release.
    pub release: Release,
}

impl Apps {
    /// Creates the manager and starts the task that turns instance events into routes.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        logs: Arc<Logs>,
        routes: Arc<RouteTable>,
    ) -> Arc<Self> {
        let (events, mut rx) = mpsc::unbounded_channel::<Event>();
        let run_as = build_user(&cfg);
        let apps = Arc::new(Self {
            paths: Paths::new(&cfg.data_dir),
            cfg,
            store,
            logs,
            routes,
            running: Mutex::new(HashMap::new()),
            deploying: Mutex::new(HashMap::new()),
            events,
            run_as,
        });
        let weak = Arc::downgrade(&apps);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(apps) = weak.upgrade() else { break };
                apps.publish(&ev.app);
            }
        });
        apps
    }

    /// The user builds run as, if any.
    pub fn build_identity(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// Takes the app's deploy lock, or says another deploy holds it.
    pub fn lock(&self, app: &AppName) -> Result<tokio::sync::OwnedMutexGuard<()>, DeployError> {
        let m = self
            .deploying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.clone())
            .or_default()
            .clone();
        m.try_lock_owned()
            .map_err(|_| DeployError::Busy(app.to_string()))
    }

    /// Recomputes where `app`'s traffic goes from its running instances and publishes it.
    pub fn publish(&self, app: &AppName) {
        if self.store.get_app(app).is_err() {
            self.routes.remove(app);
            return;
        }
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let target = match running.get(app) {
            None => AppTarget::Unavailable(Unavailable {
                code: "H14",
                desc: "No web processes running",
                hint: format!("The app {app} has no release yet. Deploy it with `git push`."),
            }),
            Some(run) => {
                let web: Vec<&Instance> = run
                    .instances
                    .iter()
                    .filter(|i| i.spec().process_type == "web")
                    .collect();
                let ups: Vec<Upstream> = web
                    .iter()
                    .filter_map(|i| match i.state() {
                        State::Up {
                            port: Some(port), ..
                        } => Some(Upstream {
                            addr: ([127, 0, 0, 1], port).into(),
                            dyno: i.spec().dyno(),
                        }),
                        _ => None,
                    })
                    .collect();
                if web.is_empty() && !self.release_has_web(app) {
                    AppTarget::Unavailable(Unavailable {
                        code: "H14",
                        desc: "No web processes running",
                        hint: format!(
                            "The current release of {app} declares no `web` process type. Add `web: COMMAND` to its Procfile and push again."
                        ),
                    })
                } else if !ups.is_empty() || web.is_empty() {
                    AppTarget::Upstreams(ups)
                } else if web
                    .iter()
                    .any(|i| matches!(i.state(), State::Crashed { .. }))
                {
                    AppTarget::Unavailable(Unavailable {
                        code: "H10",
                        desc: "App crashed",
                        hint: format!(
                            "Every web process of {app} has crashed. See `mar logs -a {app}`; it is being restarted."
                        ),
                    })
                } else {
                    AppTarget::Unavailable(Unavailable {
                        code: "H20",
                        desc: "App boot in progress",
                        hint: "The app's web process is starting. Try again in a moment."
                            .to_owned(),
                    })
                }
            }
        };
        self.routes.set(app, target);
    }

    fn release_has_web(&self, app: &AppName) -> bool {
        matches!(self.store.current_release(app), Ok(Some(r)) if r.process_types.contains_key("web"))
    }

    /// Instances of `app` now running.
    pub fn instances(&self, app: &AppName) -> Vec<Instance> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .map(|r| r.instances.clone())
            .unwrap_or_default()
    }

    /// The release running now, if any.
    pub fn running_release(&self, app: &AppName) -> Option<i64> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .map(|r| r.release)
    }

    /// Builds the tree in `build_dir` and deploys it as a new release.
    pub async fn deploy_source(
        &self,
        app: &AppName,
        source: Source,
        out: &Output,
        cancel: &CancellationToken,
    ) -> Result<Deployed, DeployError> {
        let Source {
            build_dir,
            work_dir,
            commit,
            received,
        } = source;
        let commit = commit.as_str();
        let config = self.store.config(app)?;
        let t_build = Instant::now();
        out.step(format!("Building on the {} stack", mar_core::STACK));
        let spec = BuildSpec {
            build_dir: build_dir.clone(),
            cache_dir: self.paths.cache(app),
            work_dir: work_dir.clone(),
            builtin_buildpacks: self.paths.buildpacks(),
            config: config.clone(),
            source_version: commit.to_owned(),
            timeout: self.cfg.build_timeout,
            run_as: self.run_as,
        };
        let built = mar_build::build(&spec, out, cancel).await?;
        let build_time = t_build.elapsed();

        let t_slug = Instant::now();
        out.step("Compressing...");
        let id = build_id(commit);
        let slug = self.paths.slug(app, &id);
        let run_dir = self.paths.run_dir(app, &id);
        for d in [slug.parent(), run_dir.parent()].into_iter().flatten() {
            std::fs::create_dir_all(d)?;
        }
        let (bd, sl) = (build_dir.clone(), slug.clone());
        let size = tokio::task::spawn_blocking(move || mar_build::pack_slug(&bd, &sl))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        std::fs::rename(&build_dir, &run_dir)?;
        out.step(format!(
            "Compiled slug size is {}",
            mar_build::human_size(size)
        ));
        let slug_time = t_slug.elapsed();

        let mut release_config = config;
        release_config.extend(built.config_defaults);
        let short: String = commit.chars().take(7).collect();
        let new = NewRelease {
            description: format!("Deploy {short}"),
            slug: Some(slug.to_string_lossy().into_owned()),
            slug_size: size,
            process_types: built.process_types,
            config: release_config,
            commit: Some(commit.to_owned()),
            buildpacks: built.buildpacks,
        };
        let timings = match self.launch(app, new, out).await {
            Ok(t) => t,
            Err(e) => {
                // Nothing refers to this build's slug: it never became a release.
                let _ = std::fs::remove_file(&slug);
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        out.detail(format!(
            "Timings: receive {:.1}s, build {:.1}s, slug {:.1}s, boot {:.1}s, switch {:.1}s",
            received.as_secs_f64(),
            build_time.as_secs_f64(),
            slug_time.as_secs_f64(),
            timings.0.boot.as_secs_f64(),
            timings.0.switch.as_secs_f64()
        ));
        Ok(Deployed { release: timings.1 })
    }

    /// Changes config vars (a `None` value unsets) as a new release, restarting the app with
    /// the new environment if it runs code.
    pub async fn set_config(
        &self,
        app: &AppName,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Release, DeployError> {
        let _guard = self.lock(app)?;
        let mut config = self.store.config(app)?;
        let (mut set, mut unset) = (Vec::new(), Vec::new());
        for (k, v) in changes {
            match v {
                Some(v) => {
                    set.push(k.clone());
                    config.insert(k, v);
                }
                None => {
                    if config.remove(&k).is_some() {
                        unset.push(k);
                    }
                }
            }
        }
        let description = match (set.is_empty(), unset.is_empty()) {
            (false, true) => format!("Set {} config vars", set.join(", ")),
            (true, false) => format!("Unset {} config vars", unset.join(", ")),
            (false, false) => format!(
                "Set {} and unset {} config vars",
                set.join(", "),
                unset.join(", ")
            ),
            (true, true) => "Config unchanged".to_owned(),
        };
        let current = self.store.current_release(app)?;
        let new = NewRelease {
            description,
            slug: current.as_ref().and_then(|r| r.slug.clone()),
            slug_size: current.as_ref().map_or(0, |r| r.slug_size),
            process_types: current
                .as_ref()
                .map(|r| r.process_types.clone())
                .unwrap_or_default(),
            config,
            commit: current.as_ref().and_then(|r| r.commit.clone()),
            buildpacks: current.map(|r| r.buildpacks).unwrap_or_default(),
        };
        if new.slug.is_none() {
            return Ok(self.store.create_release(app, new)?);
        }
        let (out, mut rx) = Output::channel();
        let logs = self.logs.clone();
        let name = app.clone();
        let relay = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                logs.append(&name, "mar[api]", line.trim());
            }
        });
        let res = self.launch(app, new, &out).await;
        drop(out);
        let _ = relay.await;
        Ok(res?.1)
    }

    /// Starts the processes of a release, waits for them to boot, records the release and
    /// switches traffic to it, then stops the previous instances.
    async fn launch(
        &self,
        app: &AppName,
        new: NewRelease,
        out: &Output,
    ) -> Result<(Timings, Release), DeployError> {
        let version = self
            .store
            .current_release(app)?
            .map_or(1, |r| r.version + 1);
        let t_boot = Instant::now();
        let instances = self.start_instances(
            app,
            version,
            &new.process_types,
            &new.config,
            new.slug.as_deref(),
        )?;
        if instances.iter().any(|i| i.spec().process_type == "web") {
            out.step("Waiting for the web process to accept connections on $PORT");
        }
        let mut failure = None;
        for inst in &instances {
            if let Err(e) = inst.first_boot().await {
                failure = Some(format!("{} failed to start: {e}", inst.spec().dyno()));
                break;
            }
        }
        if let Some(msg) = failure {
            out.line(format!(" !     {msg}"));
            for line in self.recent_app_output(app) {
                out.line(format!(" !     {line}"));
            }
            out.line(" !     The previous release keeps serving.");
            for inst in &instances {
                inst.stop().await;
            }
            return Err(DeployError::Boot(msg));
        }
        let boot = t_boot.elapsed();
        let t_switch = Instant::now();
        let release = self.store.create_release(app, new)?;
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                app.clone(),
                Running {
                    release: release.version,
                    instances,
                },
            );
        self.publish(app);
        let switch = t_switch.elapsed();
        out.step(format!("Launching... done, v{}", release.version));
        out.detail(format!("{} deployed to mini-MAR", self.web_url(app)));
        self.logs.append(
            app,
            "mar[api]",
            &format!(
                "Release v{} created: {}",
                release.version, release.description
            ),
        );
        if let Some(old) = old {
            // Old instances finish in-flight work on their own schedule; the deploy is done.
            tokio::spawn(async move {
                for inst in old.instances {
                    tokio::spawn(async move { inst.stop().await });
                }
            });
        }
        Ok((Timings { boot, switch }, release))
    }

    fn recent_app_output(&self, app: &AppName) -> Vec<String> {
        self.logs
            .recent(app, 8, 0)
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.render())
            .collect()
    }

    fn start_instances(
        &self,
        app: &AppName,
        version: i64,
        types: &BTreeMap<String, String>,
        config: &BTreeMap<String, String>,
        slug: Option<&str>,
    ) -> Result<Vec<Instance>, DeployError> {
        let Some(slug) = slug else {
            return Ok(Vec::new());
        };
        let dir = self.ensure_run_dir(app, Path::new(slug))?;
        let formation = self.store.formation(app)?;
        let mut instances = Vec::new();
        for (ty, command) in types {
            let count = formation.get(ty).copied().unwrap_or(0);
            for index in 1..=count {
                let spec = ProcessSpec {
                    app: app.clone(),
                    process_type: ty.clone(),
                    index,
                    command: command.clone(),
                    dir: dir.clone(),
                    env: config.clone(),
                    boot_timeout: self.cfg.boot_timeout,
                    stop_grace: self.cfg.stop_timeout,
                    release: version,
                };
                instances.push(Instance::spawn(
                    spec,
                    self.logs.clone(),
                    self.events.clone(),
                ));
            }
        }
        Ok(instances)
    }

    /// The directory a slug runs from, unpacking the slug if it is not there (after a
    /// rollback or a cleanup).
    fn ensure_run_dir(&self, app: &AppName, slug: &Path) -> Result<PathBuf, DeployError> {
        let id = slug
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .unwrap_or("unknown")
            .to_owned();
        let dir = self.paths.run_dir(app, &id);
        if !dir.is_dir() {
            mar_build::unpack_slug(slug, &dir)?;
        }
        Ok(dir)
    }

    /// Brings every app back at its current release (at start).
    pub async fn restore(&self) {
        let apps = match self.store.list_apps() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot list apps: {e}");
                return;
            }
        };
        for app in apps {
            let name = app.name;
            match self.store.current_release(&name) {
                Ok(Some(rel)) if rel.slug.is_some() => {
                    let res = self.start_instances(
                        &name,
                        rel.version,
                        &rel.process_types,
                        &rel.config,
                        rel.slug.as_deref(),
                    );
                    match res {
                        Ok(instances) => {
                            self.logs.append(
                                &name,
                                "mar[api]",
                                &format!("Restoring release v{} after start", rel.version),
                            );
                            self.running
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(
                                    name.clone(),
                                    Running {
                                        release: rel.version,
                                        instances,
                                    },
                                );
                        }
                        Err(e) => self.logs.append(
                            &name,
                            "mar[api]",
                            &format!("Cannot restore v{}: {e}", rel.version),
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!("cannot read release of {name}: {e}"),
            }
            self.publish(&name);
        }
    }

    /// Stops an app's processes and forgets its routes (before destroying it).
    pub async fn stop_app(&self, app: &AppName) {
        let run = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
        self.routes.remove(app);
        if let Some(run) = run {
            futures_util::future::join_all(run.instances.iter().map(|i| i.stop())).await;
        }
    }

    /// Stops every process of every app (at shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        let stops = all
            .iter()
            .flat_map(|r| r.instances.iter())
            .map(|i| i.stop());
        futures_util::future::join_all(stops).await;
    }

    /// `http://APP.DOMAIN:PORT/`.
    pub fn web_url(&self, app: &AppName) -> String {
        format!(
            "http://{app}.{}{}/",
            self.cfg.domain,
            port_suffix(self.cfg.listen.port())
        )
    }
}

struct Timings {
    boot: Duration,
    switch: Duration,
}

/// `:8080`, or nothing for port 80.
pub(crate) fn port_suffix(port: u16) -> String {
    if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    }
}

fn build_id(commit: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let short: String = commit
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(7)
        .collect();
    format!("{ms}-{short}")
}

/// When `mar` runs as root, builds run as an unprivileged user, provided that user can reach
/// the data directory (every ancestor must be searchable by others). Otherwise they run as
/// the current user and a warning says why.
fn build_user(cfg: &Config) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = match nix::unistd::User::from_name(&cfg.build_user) {
        Ok(Some(u)) => u,
        _ => {
            tracing::warn!(
                "build user {:?} does not exist; builds run as root",
                cfg.build_user
            );
            return None;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let mut dir = Some(cfg.data_dir.as_path());
    while let Some(d) = dir {
        let searchable = std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false);
        if !searchable {
            eprintln!(
                "mar: builds run as root, because {} is not searchable by the build user {:?} (chmod o+x it to isolate builds)",
                d.display(),
                cfg.build_user
            );
            return None;
        }
        dir = d.parent();
    }
    Some((user.uid.as_raw(), user.gid.as_raw()))
}
