//! Everything that makes a release: a push (build → slug → release phase → boot → health
//! checks → release → switch), a config change, a rollback; and `launch`, the one path by which
//! a release's instances boot and take the traffic, so every kind of release moves traffic the
//! same way (only after every new web instance accepts connections and passes its checks).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mar_build::{BuildSpec, Output};
use mar_core::AppName;
use mar_store::{NewRelease, Release};
use mar_supervisor::State;
use tokio_util::sync::CancellationToken;

use super::wasm::WasmRelease;
use super::{Apps, DeployError, Deployed, Running, Slot, Source, Workload};
use crate::healthcheck;

/// How long the steps of a launch took, for the timings line of a push.
struct Timings {
    boot: Duration,
    switch: Duration,
}

impl Apps {
    /// Deploys a pushed tree (see `deploy_source`) and tells the pusher, on `out`, why a push
    /// was rejected; a failure also goes to the app's log. The tree's work space is removed
    /// afterwards, in the background, so the pusher does not wait for it.
    pub async fn push(
        &self,
        app: &AppName,
        source: Source,
        out: &Output,
        cancel: &CancellationToken,
    ) -> Result<Deployed, DeployError> {
        let work_dir = source.work_dir.clone();
        let res = self.deploy_source(app, source, out, cancel).await;
        if let Err(e) = &res {
            for line in e.to_string().lines() {
                out.line(format!(" !     {line}"));
            }
            let current = self
                .store
                .current_release(app)
                .ok()
                .flatten()
                .filter(|r| r.slug.is_some() || r.wasm.is_some());
            // What stays: said as it is, whether the release in force runs (it may be
            // scaled to zero, worker-only or crashed).
            let verdict = match (current, self.state(app)) {
                (Some(r), "running" | "starting") => format!(
                    " !     Push rejected; the previous release keeps serving (v{} stays current).",
                    r.version
                ),
                (Some(r), state) => format!(
                    " !     Push rejected; v{} stays the current release (its processes: {state}).",
                    r.version
                ),
                (None, _) => {
                    " !     Push rejected; nothing was deployed (no code of the app has been deployed yet)."
                        .to_owned()
                }
            };
            out.line(verdict);
            // A build that failed is a build failure; the rest failed after it (the release
            // phase, the boot: R10) and is a deploy's.
            let what = if matches!(e, DeployError::Build(_)) {
                "Build failed"
            } else {
                "Deploy failed"
            };
            self.logs.append(app, "mar[build]", &format!("{what}: {e}"));
        }
        tokio::spawn(async move {
            let _ = tokio::fs::remove_dir_all(&work_dir).await;
        });
        res
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
            platform_env: self.cfg.build_env.clone(),
            timeout: self.cfg.build_timeout,
            run_as: stored.uid.map(|u| (u, u)),
            confinement: self.build_confinement(app, &build_id(&commit), stored.uid)?,
        };
        // The build's groups go with it (once its slug is packed in them), and anything still
        // in them, however this ends.
        let _groups = BuildGroups(spec.confinement.as_ref().and_then(|c| c.group.clone()));
        let built = mar_build::build(&spec, out, cancel).await?;
        let checks = match mar_build::read_pushed(&build_dir, "app.json")
            .map_err(|e| DeployError::Invalid(e.to_string()))?
        {
            Some(text) => healthcheck::parse_app_json(&text).map_err(DeployError::Invalid)?,
            None => Vec::new(),
        };
        if !checks.is_empty() {
            out.detail(format!(
                "app.json declares {} web healthcheck(s)",
                checks.len()
            ));
        }
        let id = build_id(&commit);
        let slug = self.paths.slug(app, &id);
        let run_dir = self.paths.run_dir(app, &id);
        let wasm = self
            .prepare_wasm(app, &build_dir, &run_dir, &id, &built.buildpacks, out)
            .await?;
        let build_time = t_build.elapsed();

        let t_slug = Instant::now();
        out.step("Compressing...");
        for d in [slug.parent(), run_dir.parent()].into_iter().flatten() {
            std::fs::create_dir_all(d)?;
        }
        let packer = match stored.uid {
            Some(uid) => mar_build::Packer::App {
                run_as: (uid, uid),
                confinement: spec.confinement.as_ref(),
            },
            None => mar_build::Packer::Platform,
        };
        // A slug is at most what a push may be, four times over (what a build adds).
        let max_slug = self.cfg.max_source_size.saturating_mul(4).max(1 << 30);
        let packed =
            mar_build::pack_slug(&build_dir, &slug, packer, self.cfg.build_timeout, max_slug)
                .await
                .map_err(|e| DeployError::Invalid(format!("cannot pack the slug: {e}")));
        let size = match packed {
            Ok(size) => size,
            Err(e) => {
                self.forget_wasm(app, &id);
                return Err(e);
            }
        };
        std::fs::rename(&build_dir, &run_dir)?;
        self.secure_app_dirs(app, &run_dir, stored.uid)?;
        out.step(format!(
            "Compiled slug size is {}",
            mar_build::human_size(size)
        ));
        let slug_time = t_slug.elapsed();

        // A buildpack's `config_vars` are defaults, as on Heroku: they never replace what the
        // app has, and never set the platform's own variables or settings (`MAR_*`: an app
        // raising its own memory limit through its buildpack).
        let mut release_config = config;
        for (k, v) in built.config_defaults {
            if !valid_var(&k) || set_by_the_platform(&k).is_some() || k.starts_with("MAR_") {
                out.line(format!(
                    "       Ignored {k} from the buildpack's config_vars: the platform's to set"
                ));
                continue;
            }
            release_config.entry(k).or_insert(v);
        }
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
            wasm,
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
                self.forget_wasm(app, &id);
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
        let relay = out.clone();
        let res = mar_supervisor::one_off(
            &spec,
            move |line| relay.detail(line),
            self.cfg.build_timeout,
            cancel.clone(),
        )
        .await;
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
    /// the new environment if it runs code. Names and settings' values are checked first, so a
    /// bad one changes nothing.
    pub async fn set_config(
        &self,
        app: &AppName,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Release, DeployError> {
        self.set_config_as(app, changes, None).await
    }

    /// As [`Apps::set_config`], with the release's description given (`Attach push (mws)`)
    /// instead of the list of changed names.
    pub async fn set_config_as(
        &self,
        app: &AppName,
        changes: BTreeMap<String, Option<String>>,
        description: Option<String>,
    ) -> Result<Release, DeployError> {
        for (k, v) in &changes {
            if !valid_var(k) {
                return Err(DeployError::BadInput(format!(
                    "invalid config var name {k:?}: use letters, digits and '_', not starting with a digit"
                )));
            }
            if v.is_some()
                && let Some(why) = set_by_the_platform(k)
            {
                return Err(DeployError::BadInput(format!(
                    "{k} is set by the platform ({why}); it cannot be a config var"
                )));
            }
            if let Some(v) = v {
                crate::settings::validate(k, v).map_err(DeployError::BadInput)?;
            }
        }
        let _guard = self.lock(app)?;
        let mut config = self.store.config(app)?;
        let (mut set, mut unset) = (Vec::new(), Vec::new());
        for (k, v) in changes {
            match v {
                Some(v) => {
                    if config.get(&k) != Some(&v) {
                        set.push(k.clone());
                        config.insert(k, v);
                    }
                }
                None => {
                    if config.remove(&k).is_some() {
                        unset.push(k);
                    }
                }
            }
        }
        let description = description.unwrap_or_else(|| match (set.is_empty(), unset.is_empty()) {
            (false, true) => format!("Set {} config vars", set.join(", ")),
            (true, false) => format!("Unset {} config vars", unset.join(", ")),
            (false, false) => format!(
                "Set {} and unset {} config vars",
                set.join(", "),
                unset.join(", ")
            ),
            (true, true) => "Config unchanged".to_owned(),
        });
        let current = self.store.current_release(app)?;
        // Nothing changes (an unset of a variable that is not set, a value set again): no
        // release, no restart.
        if set.is_empty() && unset.is_empty() {
            match current {
                Some(r) => return Ok(r),
                None => {
                    return Err(DeployError::BadInput(
                        "nothing to change: the config vars already are as asked".to_owned(),
                    ));
                }
            }
        }
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
                wasm: r.wasm,
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
            wasm: old.wasm,
        };
        if new.slug.is_none() {
            return Ok(self.store.create_release(app, new)?);
        }
        let out = self.log_output(app);
        Ok(self.launch(app, new, &out).await?.1)
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
        let workload = match WasmRelease::of(new.wasm.as_deref()).map_err(DeployError::Invalid)? {
            Some(wasm) => {
                out.step("Loading the WebAssembly module");
                let running = self.load_wasm(app, &new.config, &wasm).await.map_err(|e| {
                    DeployError::Boot(format!("the WebAssembly module cannot be loaded: {e}"))
                })?;
                Workload::Handler(running)
            }
            None => Workload::Processes(self.boot_slots(app, &new, version, out).await?),
        };
        let boot = t_boot.elapsed();
        let t_switch = Instant::now();
        let release = self.store.create_release(app, new)?;
        let settings = self.settings(&release.config);
        let old = self.running().insert(
            app.clone(),
            Running {
                release: release.clone(),
                workload,
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
        match old.map(|o| o.workload) {
            Some(Workload::Processes(old)) => self.retire(app, old, settings.wait_to_retire),
            // Requests in flight hold the old handler and finish on it; nothing to stop.
            Some(Workload::Handler(_)) | None => {}
        }
        self.prune(app);
        Ok((Timings { boot, switch }, release))
    }

    /// Starts a process release's instances and waits for them to boot and pass the health
    /// checks; on failure they are stopped again and the log's last lines go to `out`.
    async fn boot_slots(
        &self,
        app: &AppName,
        new: &NewRelease,
        version: i64,
        out: &Output,
    ) -> Result<Vec<Slot>, DeployError> {
        let slots = self.start_slots(app, new, version)?;
        let checks = healthcheck::from_release(&new.healthchecks);
        if slots
            .iter()
            .any(|s| s.instance.spec().process_type == "web")
        {
            out.step("Waiting for the web process to accept connections on $PORT");
        }
        if let Err(msg) = self.ready(app, &slots, &checks, out).await {
            // The error says it all, once: what failed, then the log's last lines (the
            // pusher sees it from `push`, an API client in the answer).
            let mut text = msg;
            // What the app's processes printed (the platform's own lines would only say again
            // what `msg` says).
            let recent = self
                .logs
                .recent_where(app, 8, 0, |l| l.source.starts_with("app["))
                .unwrap_or_default();
            if recent.is_empty() {
                text.push_str("\nThe app printed nothing.");
            } else {
                text.push_str("\nThe app's last lines:");
                for line in recent {
                    text.push_str("\n  ");
                    text.push_str(&line.render());
                }
            }
            futures_util::future::join_all(slots.iter().map(|s| s.instance.stop())).await;
            return Err(DeployError::Boot(text));
        }
        Ok(slots)
    }

    /// Waits for new instances to boot; web instances must also pass the health checks.
    pub(super) async fn ready(
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
}

/// A slug's id: when it was built and the commit, so ids sort by age and say what they hold.
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

/// Config var names must be usable as environment variable names and as file names in the
/// buildpack ENV_DIR.
/// Why `name` is the platform's to set in every process's environment, if it is.
fn set_by_the_platform(name: &str) -> Option<&'static str> {
    match name {
        "PORT" => Some("each web instance gets a port of its own"),
        "DYNO" | "PS" => Some("each process gets its name, such as web.1"),
        "STACK" => Some("the stack the slug was built on"),
        "HOME" => Some("each process's home is its slug"),
        _ => None,
    }
}

fn valid_var(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A build's control groups: emptied and removed when dropped.
struct BuildGroups(Option<mar_supervisor::InstanceGroup>);

impl Drop for BuildGroups {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.kill_all();
            g.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_names() {
        assert!(valid_var("GREETING"));
        assert!(valid_var("_a1"));
        assert!(!valid_var("1A"));
        assert!(!valid_var("A-B"));
        assert!(!valid_var("../x"));
        assert!(!valid_var(""));
    }
}
