//! Turning a release into running instances: the process spec of each instance (command,
//! directory, environment, user, limits, cgroups) and the slots that track them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use mar_core::AppName;
use mar_store::{NewRelease, Release};
use mar_supervisor::{EphemeralHome, Instance, Limits, ProcessSpec, Sandbox};
use tokio_util::sync::CancellationToken;

use super::{Apps, DeployError, Slot};

impl Apps {
    /// The spec of instance `ty.index` of release `version`, whose slug and config `new` holds:
    /// it runs from the slug's run directory (unpacked again if missing) with the release's
    /// config as environment, as the app's user, with the app's limits.
    pub(super) fn spec(
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
            let tmp = self.app_tmp_dir(app, uid)?;
            env.insert("TMPDIR".to_owned(), tmp.to_string_lossy().into_owned());
        }
        // Where the home can be overlaid (a mount namespace of its own), it is ephemeral and
        // bounded.
        let home = match private_tmp {
            true => Some(EphemeralHome {
                dir: dir.clone(),
                scratch: self.scratch_dir(app)?,
                size: settings.disk_bytes,
                read_only: self.paths.root().to_owned(),
            }),
            false => None,
        };
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
                home,
            },
            limits: settings.limits,
            cgroups: self.cgroups.clone(),
            firewall: self.firewall.clone(),
            stable_after: mar_supervisor::STABLE_AFTER,
        })
    }

    /// apps/APP/scratch: root's, empty, closed: where each instance mounts the tmpfs that holds
    /// its writes to its home, in its own mount namespace.
    fn scratch_dir(&self, app: &AppName) -> Result<std::path::PathBuf, DeployError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.paths.app(app).join("scratch");
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(e.into()),
        }
    }

    /// A private /tmp needs a mount over /tmp, which would hide the data directory (and so the
    /// app's own slug) if it lives under /tmp.
    pub(super) fn private_tmp(&self) -> bool {
        self.isolate && !self.cfg.data_dir.starts_with("/tmp")
    }

    /// How a build of `app` is confined when apps are isolated: as the app's user, in a
    /// sandbox like an instance's, in control groups of its own with [`build_limits`]. The
    /// caller kills what is left in the groups and removes them when the build ends.
    pub(super) fn build_confinement(
        &self,
        app: &AppName,
        id: &str,
        uid: Option<u32>,
    ) -> Result<Option<mar_build::Confinement>, DeployError> {
        if !self.isolate {
            return Ok(None);
        }
        let group = match &self.cgroups {
            Some(cg) => cg.create(&format!("build-{app}-{id}"), &build_limits())?,
            None => None,
        };
        Ok(Some(mar_build::Confinement {
            sandbox: Sandbox {
                user: uid.map(|u| (u, u)),
                private_tmp: self.private_tmp(),
                nofile: build_limits().nofile,
                home: None,
            },
            group,
        }))
    }

    /// The spec of instance `ty.index` of a recorded release.
    pub(super) fn spec_from_release(
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

    /// Starts an instance, with a fresh in-flight counter and retire signal.
    pub(super) fn spawn(&self, spec: ProcessSpec) -> Slot {
        Slot {
            instance: Instance::spawn(spec, self.logs.clone(), self.events.clone()),
            load: Arc::new(AtomicUsize::new(0)),
            retire: CancellationToken::new(),
        }
    }

    /// Starts the instances the app's formation asks of each process type of the release
    /// (`release` is not a long-running type); none for a release without code.
    pub(super) fn start_slots(
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
}

/// What one build may use: enough for compilers and package managers, not a whole machine.
/// The build's time limit is `build_timeout` in `mar.yaml`.
fn build_limits() -> Limits {
    Limits {
        memory_bytes: Some(2 << 30),
        pids: Some(1024),
        nofile: Some(10_000),
        cpu_millis: Some(1000),
    }
}
