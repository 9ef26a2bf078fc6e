//! The app lifecycle: deploys (build → slug → release phase → boot → health checks → release →
//! switch → drain → stop old), config changes, scaling, rolling restarts, rollbacks, one-off
//! processes, bringing apps back at start, and stopping everything at shutdown.
//!
//! Traffic only moves once every new web instance accepts connections and passes its health
//! checks; a deploy that fails at any step leaves the previous release serving. One deploy,
//! config change, scale, restart or rollback per app runs at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mar_build::{BuildSpec, Output};
use mar_core::AppName;
use mar_logs::Logs;
use mar_router::{AppTarget, RouteTable, Unavailable, Upstream};
use mar_store::{NewRelease, Release, Store, StoreError};
use mar_supervisor::{Cgroups, Event, Instance, ProcessSpec, Sandbox, State};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::healthcheck;
use crate::paths::Paths;
use crate::settings::{AppSettings, Defaults};

/// Why a lifecycle operation failed; each message is for the user.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Another operation on the same app is running.
    #[error("another deploy of {0} is in progress; try again when it has finished")]
    Busy(String),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] mar_build::BuildError),
    /// New instances did not come up or failed their health checks.
    #[error("{0}")]
    Boot(String),
    /// The release phase failed.
    #[error("{0}")]
    ReleasePhase(String),
    /// The request does not make sense for this app (unknown process type, no release...).
    #[error("{0}")]
    Invalid(String),
    /// State error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system error.
    #[error("deploy I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One running instance, the count of requests in flight to it, and the signal that closes
/// its WebSockets when it is retired.
#[derive(Clone)]
struct Slot {
    instance: Instance,
    load: Arc<AtomicUsize>,
    retire: CancellationToken,
}

struct Running {
    release: Release,
    slots: Vec<Slot>,
}

/// All apps' processes and lifecycle operations. Shared behind an `Arc`.
pub struct Apps {
    cfg: Arc<Config>,
    paths: Paths,
    store: Arc<Store>,
    logs: Arc<Logs>,
    routes: Arc<RouteTable>,
    running: Mutex<HashMap<AppName, Running>>,
    deploying: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
    events: mpsc::UnboundedSender<Event>,
    cgroups: Option<Cgroups>,
    isolate: bool,
    one_offs: AtomicU32,
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

/// First uid given to apps when `mar` runs as root.
const APP_UID_BASE: u32 = 20_000;
/// How long WebSockets to a retired instance stay open before they get a Close (1012).
const WEBSOCKET_DRAIN: Duration = Duration::from_secs(5);
/// Most instances of one process type.
const MAX_SCALE: u32 = 100;

impl Apps {
    /// Creates the manager, kills what a previous run of `mar serve` left behind, and starts
    /// the task that turns instance events into routes.
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<Store>,
        logs: Arc<Logs>,
        routes: Arc<RouteTable>,
    ) -> Arc<Self> {
        let (events, mut rx) = mpsc::unbounded_channel::<Event>();
        let isolate = can_isolate(&cfg);
        let cgroups = nix::unistd::geteuid()
            .is_root()
            .then(|| Cgroups::detect(&cgroup_name(&cfg.data_dir)))
            .filter(Cgroups::available);
        if let Some(cg) = &cgroups {
            let killed = cg.sweep();
            if killed > 0 {
                eprintln!("mar: stopped {killed} app processes left by a previous run");
            }
        }
        let apps = Arc::new(Self {
            paths: Paths::new(&cfg.data_dir),
            cfg,
            store,
            logs,
            routes,
            running: Mutex::new(HashMap::new()),
            deploying: Mutex::new(HashMap::new()),
            events,
            cgroups,
            isolate,
            one_offs: AtomicU32::new(0),
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

    /// Where a new app's own uid starts, when apps get one.
    pub fn uid_base(&self) -> Option<u32> {
        self.isolate.then_some(APP_UID_BASE)
    }

    /// Takes the app's lifecycle lock, or says another operation holds it.
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

    fn defaults(&self) -> Defaults {
        Defaults {
            boot_timeout: self.cfg.boot_timeout,
            stop_timeout: self.cfg.stop_timeout,
            router: self.cfg.router.clone(),
        }
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
                let web: Vec<&Slot> = run
                    .slots
                    .iter()
                    .filter(|s| s.instance.spec().process_type == "web")
                    .collect();
                let ups: Vec<Upstream> = web
                    .iter()
                    .filter_map(|s| match s.instance.state() {
                        State::Up {
                            port: Some(port), ..
                        } => Some(Upstream {
                            addr: ([127, 0, 0, 1], port).into(),
                            dyno: s.instance.spec().dyno(),
                            load: s.load.clone(),
                            retire: s.retire.clone(),
                            refused_until: Default::default(),
                        }),
                        _ => None,
                    })
                    .collect();
                if !ups.is_empty() {
                    AppTarget::Upstreams(ups)
                } else if !run.release.process_types.contains_key("web") {
                    AppTarget::Unavailable(Unavailable {
                        code: "H14",
                        desc: "No web processes running",
                        hint: format!(
                            "The current release of {app} declares no `web` process type. Add `web: COMMAND` to its Procfile and push again."
                        ),
                    })
                } else if web.is_empty() {
                    AppTarget::Unavailable(Unavailable {
                        code: "H14",
                        desc: "No web processes running",
                        hint: format!(
                            "{app} is scaled to zero web processes. Scale up with `mar ps:scale web=1 -a {app}`."
                        ),
                    })
                } else if web
                    .iter()
                    .any(|s| matches!(s.instance.state(), State::Crashed { .. }))
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
        let options = running
            .get(app)
            .map(|r| self.settings(&r.release.config).router)
            .unwrap_or_else(|| self.cfg.router.clone());
        self.routes.set_with(app, target, options);
    }

    /// Publishes every custom domain to the router.
    pub fn publish_domains(&self) {
        match self.store.all_domains() {
            Ok(all) => {
                let map = all
                    .into_iter()
                    .filter_map(|(host, app)| AppName::parse(&app).ok().map(|a| (host, a)))
                    .collect();
                self.routes.set_custom_domains(map);
            }
            Err(e) => tracing::error!("cannot read custom domains: {e}"),
        }
    }

    /// Instances of `app` now running, in process type and index order.
    pub fn instances(&self, app: &AppName) -> Vec<Instance> {
        let mut v: Vec<Instance> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .map(|r| r.slots.iter().map(|s| s.instance.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            (&a.spec().process_type, a.spec().index).cmp(&(&b.spec().process_type, b.spec().index))
        });
        v
    }

    /// Builds the tree in `source` and deploys it as a new release.
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
        let stored = self.store.get_app(app)?;
        let config = self.store.config(app)?;
        let t_build = Instant::now();
        out.step(format!("Building on the {} stack", mar_core::STACK));
        let spec = BuildSpec {
            build_dir: build_dir.clone(),
            cache_dir: self.paths.cache(app),
            work_dir: work_dir.clone(),
            builtin_buildpacks: self.paths.buildpacks(),
            config: config.clone(),
            source_version: commit.clone(),
            timeout: self.cfg.build_timeout,
            run_as: stored.uid.map(|u| (u, u)),
        };
        let built = mar_build::build(&spec, out, cancel).await?;
        let checks = match std::fs::read_to_string(build_dir.join("app.json")) {
            Ok(text) => healthcheck::parse_app_json(&text).map_err(DeployError::Invalid)?,
            Err(_) => Vec::new(),
        };
        if !checks.is_empty() {
            out.detail(format!(
                "app.json declares {} web healthcheck(s)",
                checks.len()
            ));
        }
        let build_time = t_build.elapsed();

        let t_slug = Instant::now();
        out.step("Compressing...");
        let id = build_id(&commit);
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
        self.secure_app_dirs(app, &run_dir, stored.uid)?;
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
            commit: Some(commit.clone()),
            buildpacks: built.buildpacks,
            healthchecks: serde_json::to_string(&checks).unwrap_or_else(|_| "null".to_owned()),
        };
        let result = async {
            self.release_phase(app, &new, out, cancel).await?;
            self.launch(app, new, out).await
        }
        .await;
        let (timings, release) = match result {
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
            timings.boot.as_secs_f64(),
            timings.switch.as_secs_f64()
        ));
        Ok(Deployed { release })
    }

    /// Runs the Procfile's `release` command, if any, in the new slug with the new config;
    /// a non-zero exit aborts the deploy.
    async fn release_phase(
        &self,
        app: &AppName,
        new: &NewRelease,
        out: &Output,
        cancel: &CancellationToken,
    ) -> Result<(), DeployError> {
        let Some(command) = new.process_types.get("release") else {
            return Ok(());
        };
        out.step("Running release command...");
        let spec = self.spec(app, new, "release", 1, command, self.next_version(app)?)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let relay = {
            let out = out.clone();
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    out.detail(line);
                }
            })
        };
        let res = mar_supervisor::one_off(&spec, tx, self.cfg.build_timeout, cancel.clone()).await;
        let _ = relay.await;
        match res {
            Ok(0) => Ok(()),
            Ok(code) => Err(DeployError::ReleasePhase(format!(
                "Release command failed (exit status {code}); the release was not deployed"
            ))),
            Err(e) => Err(DeployError::ReleasePhase(format!(
                "Release command failed: {e}"
            ))),
        }
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
        let new = match current {
            Some(r) => NewRelease {
                description,
                slug: r.slug,
                slug_size: r.slug_size,
                process_types: r.process_types,
                config,
                commit: r.commit,
                buildpacks: r.buildpacks,
                healthchecks: r.healthchecks,
            },
            None => NewRelease {
                description,
                config,
                healthchecks: "null".to_owned(),
                ..Default::default()
            },
        };
        if new.slug.is_none() {
            return Ok(self.store.create_release(app, new)?);
        }
        let out = self.log_output(app);
        Ok(self.launch(app, new, &out).await?.1)
    }

    /// Rolls back to `version` (default: the release before the current one) by making a new
    /// release from its slug and config.
    pub async fn rollback(
        &self,
        app: &AppName,
        version: Option<i64>,
    ) -> Result<Release, DeployError> {
        let _guard = self.lock(app)?;
        let current = self
            .store
            .current_release(app)?
            .ok_or_else(|| DeployError::Invalid(format!("{app} has no releases to roll back")))?;
        let target = version.unwrap_or(current.version - 1);
        if target < 1 || target > current.version {
            return Err(DeployError::Invalid(format!(
                "cannot roll back to v{target}: {app}'s releases are v1 to v{}",
                current.version
            )));
        }
        if target == current.version {
            return Err(DeployError::Invalid(format!(
                "v{target} is already the current release of {app}"
            )));
        }
        let old = self.store.release(app, target)?;
        if let Some(slug) = &old.slug
            && !Path::new(slug).is_file()
        {
            return Err(DeployError::Invalid(format!(
                "cannot roll back to v{target}: its slug was pruned (the last {} releases keep theirs)",
                self.cfg.keep_releases
            )));
        }
        let new = NewRelease {
            description: format!("Rollback to v{target}"),
            slug: old.slug,
            slug_size: old.slug_size,
            process_types: old.process_types,
            config: old.config,
            commit: old.commit,
            buildpacks: old.buildpacks,
            healthchecks: old.healthchecks,
        };
        if new.slug.is_none() {
            return Ok(self.store.create_release(app, new)?);
        }
        let out = self.log_output(app);
        Ok(self.launch(app, new, &out).await?.1)
    }

    /// Sets instance counts and starts or stops instances to match, without a new release.
    pub async fn scale(
        &self,
        app: &AppName,
        changes: BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, DeployError> {
        let _guard = self.lock(app)?;
        let current = self.store.current_release(app)?;
        for (ty, n) in &changes {
            mar_core::ProcessType::parse(ty).map_err(|e| DeployError::Invalid(e.to_string()))?;
            if ty == "release" {
                return Err(DeployError::Invalid(
                    "`release` runs once per deploy and cannot be scaled".to_owned(),
                ));
            }
            if let Some(r) = &current
                && !r.process_types.contains_key(ty)
            {
                let known: Vec<&str> = r
                    .process_types
                    .keys()
                    .map(String::as_str)
                    .filter(|t| *t != "release")
                    .collect();
                return Err(DeployError::Invalid(format!(
                    "no such process type {ty}: the current release has {}",
                    known.join(", ")
                )));
            }
            if *n > MAX_SCALE {
                return Err(DeployError::Invalid(format!(
                    "cannot scale {ty} to {n}: at most {MAX_SCALE} instances per type"
                )));
            }
        }
        self.store.set_formation(app, &changes)?;
        let Some(release) = current.filter(|r| r.slug.is_some()) else {
            return Ok(self.store.formation(app)?);
        };
        let (mut to_stop, settings) = (Vec::new(), self.settings(&release.config));
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let Some(run) = running.get_mut(app) else {
                return Ok(self.store.formation(app)?);
            };
            for (ty, want) in &changes {
                let Some(command) = release.process_types.get(ty) else {
                    continue;
                };
                let have: Vec<u32> = run
                    .slots
                    .iter()
                    .filter(|s| &s.instance.spec().process_type == ty)
                    .map(|s| s.instance.spec().index)
                    .collect();
                for index in 1..=*want {
                    if !have.contains(&index) {
                        let spec = self.spec_from_release(app, &release, ty, index, command)?;
                        run.slots.push(self.spawn(spec));
                    }
                }
                let (keep, stop): (Vec<Slot>, Vec<Slot>) = run.slots.drain(..).partition(|s| {
                    &s.instance.spec().process_type != ty || s.instance.spec().index <= *want
                });
                run.slots = keep;
                to_stop.extend(stop);
            }
        }
        self.publish(app);
        self.retire(app, to_stop, settings.wait_to_retire);
        self.logs.append(
            app,
            "mar[api]",
            &format!(
                "Scaled to {}",
                changes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
        Ok(self.store.formation(app)?)
    }

    /// Restarts instances one at a time: each gets a replacement that must boot (and pass the
    /// health checks) before the old one is drained and stopped. `target` is a type (`web`), an
    /// instance (`web.2`) or `None` for all.
    pub async fn restart(
        &self,
        app: &AppName,
        target: Option<&str>,
    ) -> Result<Vec<String>, DeployError> {
        let _guard = self.lock(app)?;
        let (release, slots) = {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let run = running
                .get(app)
                .ok_or_else(|| DeployError::Invalid(format!("{app} has no running processes")))?;
            (run.release.clone(), run.slots.clone())
        };
        let chosen: Vec<Slot> = slots
            .into_iter()
            .filter(|s| match target {
                None => true,
                Some(t) if t.contains('.') => s.instance.spec().dyno() == t,
                Some(t) => s.instance.spec().process_type == t,
            })
            .collect();
        if chosen.is_empty() {
            return Err(DeployError::Invalid(format!(
                "no running process matches {}",
                target.unwrap_or("any")
            )));
        }
        let settings = self.settings(&release.config);
        let checks = healthcheck::from_release(&release.healthchecks);
        let out = self.log_output(app);
        let mut restarted = Vec::new();
        for old in chosen {
            let s = old.instance.spec();
            let spec =
                self.spec_from_release(app, &release, &s.process_type, s.index, &s.command)?;
            let new = self.spawn(spec);
            if let Err(e) = self
                .ready(app, std::slice::from_ref(&new), &checks, &out)
                .await
            {
                new.instance.stop().await;
                return Err(DeployError::Boot(format!(
                    "{e}; the running instance keeps serving"
                )));
            }
            {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(run) = running.get_mut(app) {
                    run.slots.retain(|x| x.instance.id() != old.instance.id());
                    run.slots.push(new);
                }
            }
            self.publish(app);
            restarted.push(old.instance.spec().dyno());
            self.logs.append(
                app,
                "mar[api]",
                &format!("Restarted {}", old.instance.spec().dyno()),
            );
            self.retire(app, vec![old], settings.wait_to_retire);
        }
        Ok(restarted)
    }

    /// Runs a one-off command in the app's current slug and environment, as `run.N`.
    pub async fn run_command(
        &self,
        app: &AppName,
        command: &str,
        out: mpsc::UnboundedSender<String>,
        cancel: CancellationToken,
    ) -> Result<i32, DeployError> {
        let release = self
            .store
            .current_release(app)?
            .filter(|r| r.slug.is_some())
            .ok_or_else(|| {
                DeployError::Invalid(format!(
                    "{app} has no code yet: deploy it with `git push` first"
                ))
            })?;
        let index = self.one_offs.fetch_add(1, Ordering::Relaxed) + 1;
        let spec = self.spec_from_release(app, &release, "run", index, command)?;
        self.logs.append(
            app,
            "mar[api]",
            &format!("Starting process with command `{command}` as run.{index}"),
        );
        let code = mar_supervisor::one_off(&spec, out, Duration::from_secs(3600), cancel)
            .await
            .map_err(|e| DeployError::Boot(e.to_string()))?;
        self.logs.append(
            app,
            "mar[api]",
            &format!("run.{index} exited with status {code}"),
        );
        Ok(code)
    }

    /// Starts the processes of a release, waits for them to boot and pass their health checks,
    /// records the release and switches traffic to it, then drains and stops the previous
    /// instances.
    async fn launch(
        &self,
        app: &AppName,
        new: NewRelease,
        out: &Output,
    ) -> Result<(Timings, Release), DeployError> {
        let version = self.next_version(app)?;
        let t_boot = Instant::now();
        let slots = self.start_slots(app, &new, version)?;
        let checks = healthcheck::from_release(&new.healthchecks);
        if slots
            .iter()
            .any(|s| s.instance.spec().process_type == "web")
        {
            out.step("Waiting for the web process to accept connections on $PORT");
        }
        if let Err(msg) = self.ready(app, &slots, &checks, out).await {
            out.line(format!(" !     {msg}"));
            for line in self.logs.recent(app, 8, 0).unwrap_or_default() {
                out.line(format!(" !     {}", line.render()));
            }
            out.line(" !     The previous release keeps serving.");
            futures_util::future::join_all(slots.iter().map(|s| s.instance.stop())).await;
            return Err(DeployError::Boot(msg));
        }
        let boot = t_boot.elapsed();
        let t_switch = Instant::now();
        let release = self.store.create_release(app, new)?;
        let settings = self.settings(&release.config);
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                app.clone(),
                Running {
                    release: release.clone(),
                    slots,
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
            self.retire(app, old.slots, settings.wait_to_retire);
        }
        self.prune(app);
        Ok((Timings { boot, switch }, release))
    }

    /// Waits for new instances to boot; web instances must also pass the health checks.
    async fn ready(
        &self,
        app: &AppName,
        slots: &[Slot],
        checks: &[healthcheck::Check],
        out: &Output,
    ) -> Result<(), String> {
        for s in slots {
            s.instance
                .first_boot()
                .await
                .map_err(|e| format!("{} failed to start: {e}", s.instance.spec().dyno()))?;
        }
        if checks.is_empty() {
            return Ok(());
        }
        out.step("Running healthchecks");
        let host = format!("{app}.{}", self.cfg.domain);
        for s in slots
            .iter()
            .filter(|s| s.instance.spec().process_type == "web")
        {
            let State::Up {
                port: Some(port), ..
            } = s.instance.state()
            else {
                return Err(format!(
                    "{} stopped before its healthchecks",
                    s.instance.spec().dyno()
                ));
            };
            let say = |line: String| out.detail(line);
            healthcheck::run(
                checks,
                ([127, 0, 0, 1], port).into(),
                &host,
                &s.instance.spec().dyno(),
                &say,
            )
            .await?;
        }
        Ok(())
    }

    /// Stops instances that no longer get traffic once the requests in flight to them are
    /// done (or `wait` has passed), in the background.
    fn retire(&self, app: &AppName, slots: Vec<Slot>, wait: Duration) {
        if slots.is_empty() {
            return;
        }
        let logs = self.logs.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + wait;
            let busy = |slots: &[Slot]| {
                slots
                    .iter()
                    .map(|s| s.load.load(Ordering::Acquire))
                    .sum::<usize>()
            };
            // HTTP requests finish on their own; WebSockets would stay for hours, so after a
            // short drain period they get a Close (1012, service restart) and reconnect to the
            // new instances.
            let ws_drain = Instant::now() + wait.min(WEBSOCKET_DRAIN);
            while busy(&slots) > 0 && Instant::now() < ws_drain {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for s in &slots {
                s.retire.cancel();
            }
            while busy(&slots) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = busy(&slots);
            if left > 0 {
                logs.append(&app, "mar[api]", &format!("{left} requests still in flight after {}s; stopping the old processes anyway", wait.as_secs()));
            }
            futures_util::future::join_all(slots.iter().map(|s| s.instance.stop())).await;
        });
    }

    /// Deletes slugs (and their unpacked copies) that none of the last `keep_releases`
    /// releases uses.
    fn prune(&self, app: &AppName) {
        let Ok(releases) = self.store.releases(app) else {
            return;
        };
        let keep: HashSet<PathBuf> = releases
            .iter()
            .take(self.cfg.keep_releases)
            .filter_map(|r| r.slug.as_ref().map(PathBuf::from))
            .collect();
        let dir = self.paths.app(app).join("slugs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if keep.contains(&path) {
                continue;
            }
            if let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".tar.gz"))
            {
                let _ = std::fs::remove_dir_all(self.paths.run_dir(app, id));
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    fn next_version(&self, app: &AppName) -> Result<i64, DeployError> {
        Ok(self
            .store
            .current_release(app)?
            .map_or(1, |r| r.version + 1))
    }

    fn settings(&self, config: &BTreeMap<String, String>) -> AppSettings {
        AppSettings::from_config(config, &self.defaults())
    }

    /// An output whose lines go to the app's log (for operations not started by a push).
    fn log_output(&self, app: &AppName) -> Output {
        let (out, mut rx) = Output::channel();
        let logs = self.logs.clone();
        let name = app.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                logs.append(&name, "mar[api]", line.trim());
            }
        });
        out
    }

    fn spec(
        &self,
        app: &AppName,
        new: &NewRelease,
        ty: &str,
        index: u32,
        command: &str,
        version: i64,
    ) -> Result<ProcessSpec, DeployError> {
        let slug = new
            .slug
            .as_deref()
            .ok_or_else(|| DeployError::Invalid(format!("{app} has no code yet")))?;
        let uid = self.store.get_app(app)?.uid;
        let dir = self.ensure_run_dir(app, Path::new(slug), uid)?;
        let settings = self.settings(&new.config);
        let private_tmp = self.private_tmp();
        let mut env = new.config.clone();
        if let (Some(uid), false) = (uid, private_tmp) {
            // No mount namespace for /tmp here: give the app a private temporary directory
            // that well-behaved programs use instead.
            let tmp = self.paths.app(app).join("tmp");
            std::fs::create_dir_all(&tmp)?;
            std::os::unix::fs::lchown(&tmp, Some(uid), Some(uid))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
            env.insert("TMPDIR".to_owned(), tmp.to_string_lossy().into_owned());
        }
        Ok(ProcessSpec {
            app: app.clone(),
            process_type: ty.to_owned(),
            index,
            command: command.to_owned(),
            dir,
            env,
            boot_timeout: settings.boot_timeout,
            stop_grace: settings.stop_timeout,
            release: version,
            sandbox: Sandbox {
                user: uid.map(|u| (u, u)),
                private_tmp,
                nofile: settings.limits.nofile,
            },
            limits: settings.limits,
            cgroups: self.cgroups.clone(),
        })
    }

    /// A private /tmp needs a mount over /tmp, which would hide the data directory (and so the
    /// app's own slug) if it lives under /tmp.
    fn private_tmp(&self) -> bool {
        self.isolate && !self.cfg.data_dir.starts_with("/tmp")
    }

    fn spec_from_release(
        &self,
        app: &AppName,
        r: &Release,
        ty: &str,
        index: u32,
        command: &str,
    ) -> Result<ProcessSpec, DeployError> {
        let new = NewRelease {
            slug: r.slug.clone(),
            config: r.config.clone(),
            ..Default::default()
        };
        self.spec(app, &new, ty, index, command, r.version)
    }

    fn spawn(&self, spec: ProcessSpec) -> Slot {
        Slot {
            instance: Instance::spawn(spec, self.logs.clone(), self.events.clone()),
            load: Arc::new(AtomicUsize::new(0)),
            retire: CancellationToken::new(),
        }
    }

    fn start_slots(
        &self,
        app: &AppName,
        new: &NewRelease,
        version: i64,
    ) -> Result<Vec<Slot>, DeployError> {
        if new.slug.is_none() {
            return Ok(Vec::new());
        }
        let formation = self.store.formation(app)?;
        let mut slots = Vec::new();
        for (ty, command) in &new.process_types {
            if ty == "release" {
                continue;
            }
            for index in 1..=formation.get(ty).copied().unwrap_or(0) {
                slots.push(self.spawn(self.spec(app, new, ty, index, command, version)?));
            }
        }
        Ok(slots)
    }

    /// Makes the app's directories private: apps/APP traversable only, the run directory and
    /// the cache owned by the app's user and closed to everyone else.
    fn secure_app_dirs(
        &self,
        app: &AppName,
        run_dir: &Path,
        uid: Option<u32>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let set =
            |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        set(&self.paths.app(app), 0o711)?;
        set(&self.paths.app(app).join("slugs"), 0o700)?;
        set(&self.paths.app(app).join("run"), 0o711)?;
        if let Some(uid) = uid {
            std::os::unix::fs::lchown(run_dir, Some(uid), Some(uid))?;
        }
        set(run_dir, 0o700)?;
        let cache = self.paths.cache(app);
        if cache.is_dir() {
            set(&cache, 0o700)?;
        }
        Ok(())
    }

    /// The directory a slug runs from, unpacking the slug if it is not there (after a
    /// rollback to a pruned copy, or a cleanup).
    fn ensure_run_dir(
        &self,
        app: &AppName,
        slug: &Path,
        uid: Option<u32>,
    ) -> Result<PathBuf, DeployError> {
        let id = slug
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .unwrap_or("unknown")
            .to_owned();
        let dir = self.paths.run_dir(app, &id);
        if !dir.is_dir() {
            mar_build::unpack_slug(slug, &dir)?;
            if let Some(uid) = uid {
                chown_tree(&dir, uid)?;
            }
            self.secure_app_dirs(app, &dir, uid)?;
        }
        Ok(dir)
    }

    /// Brings every app back at its current release (at start).
    pub async fn restore(&self) {
        self.publish_domains();
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
                    let new = NewRelease {
                        slug: rel.slug.clone(),
                        process_types: rel.process_types.clone(),
                        config: rel.config.clone(),
                        ..Default::default()
                    };
                    match self.start_slots(&name, &new, rel.version) {
                        Ok(slots) => {
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
                                        release: rel,
                                        slots,
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
            futures_util::future::join_all(run.slots.iter().map(|s| s.instance.stop())).await;
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
            .flat_map(|r| r.slots.iter())
            .map(|s| s.instance.stop());
        futures_util::future::join_all(stops).await;
        if let Some(cg) = &self.cgroups {
            cg.sweep();
            cg.remove_root();
        }
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

fn chown_tree(root: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid))?;
    if root.is_symlink() || !root.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(root)? {
        chown_tree(&entry?.path(), uid)?;
    }
    Ok(())
}

/// One cgroup root per data directory, so that several `mar serve` on one host (the tests run
/// many) never sweep each other's processes.
fn cgroup_name(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    format!("mar-{h:016x}")
}

/// Apps get their own users (and a private /tmp) when `mar` runs as root and the data directory
/// is reachable by other users (every ancestor searchable). Otherwise every app runs as the
/// current user, and a warning at start says why.
fn can_isolate(cfg: &Config) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "mar: not running as root: apps run as the current user, without per-app users or limits"
        );
        return false;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut dir = Some(cfg.data_dir.as_path());
    while let Some(d) = dir {
        let searchable = std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false);
        if !searchable {
            eprintln!(
                "mar: apps run as root, because {} is not searchable by other users (chmod o+x it to give each app its own user)",
                d.display()
            );
            return false;
        }
        dir = d.parent();
    }
    true
}
