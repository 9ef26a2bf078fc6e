//! Operations on the running release that make no new release: scaling (the formation),
//! rolling restarts, and one-off commands (`mar run`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mar_core::AppName;
use tokio_util::sync::CancellationToken;

use super::{Apps, DeployError, Running, Slot, Workload};
use crate::healthcheck;

/// Most instances of one process type.
const MAX_SCALE: u32 = 100;

impl Apps {
    /// Sets instance counts and starts or stops instances to match, without a new release.
    pub async fn scale(
        &self,
        app: &AppName,
        changes: BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>, DeployError> {
        let _guard = self.lock(app)?;
        let current = self.store.current_release(app)?;
        if current.as_ref().is_some_and(|r| r.wasm.is_some()) {
            return Err(DeployError::Invalid(format!(
                "{app} is a WebAssembly app: it has no processes to scale, its requests run in-process; set {} to change how many run at once",
                crate::settings::WASM_CONCURRENCY
            )));
        }
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
            let mut running = self.running();
            let Some(run) = running.get_mut(app) else {
                return Ok(self.store.formation(app)?);
            };
            let Workload::Processes(slots) = &mut run.workload else {
                return Err(DeployError::Invalid(format!(
                    "{app} is a WebAssembly app: it has no processes to scale"
                )));
            };
            for (ty, want) in &changes {
                let Some(command) = release.process_types.get(ty) else {
                    continue;
                };
                let have: Vec<u32> = slots
                    .iter()
                    .filter(|s| &s.instance.spec().process_type == ty)
                    .map(|s| s.instance.spec().index)
                    .collect();
                for index in 1..=*want {
                    if !have.contains(&index) {
                        let spec = self.spec_from_release(app, &release, ty, index, command)?;
                        slots.push(self.spawn(spec));
                    }
                }
                let (keep, stop): (Vec<Slot>, Vec<Slot>) = slots.drain(..).partition(|s| {
                    &s.instance.spec().process_type != ty || s.instance.spec().index <= *want
                });
                *slots = keep;
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
            let running = self.running();
            let run = running
                .get(app)
                .ok_or_else(|| DeployError::Invalid(format!("{app} has no running processes")))?;
            match &run.workload {
                Workload::Processes(slots) => (run.release.clone(), Some(slots.clone())),
                Workload::Handler(_) => (run.release.clone(), None),
            }
        };
        let Some(slots) = slots else {
            return self.restart_wasm(app, release).await;
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
            // A block of its own: the running map's lock must be released before `publish`
            // takes it again.
            {
                if let Some(Running {
                    workload: Workload::Processes(slots),
                    ..
                }) = self.running().get_mut(app)
                {
                    slots.retain(|x| x.instance.id() != old.instance.id());
                    slots.push(new);
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

    /// A WASM app's restart: a new handler from the same release (fresh instances, counters
    /// and idle pool) takes the traffic; requests in flight finish on the old one.
    async fn restart_wasm(
        &self,
        app: &AppName,
        release: mar_store::Release,
    ) -> Result<Vec<String>, DeployError> {
        let wasm = super::wasm::WasmRelease::of(release.wasm.as_deref())
            .map_err(DeployError::Invalid)?
            .ok_or_else(|| DeployError::Invalid(format!("{app} runs no WebAssembly release")))?;
        let running = self
            .load_wasm(app, &release.config, &wasm)
            .await
            .map_err(|e| DeployError::Boot(format!("{e}; the running handler keeps serving")))?;
        if let Some(run) = self.running().get_mut(app) {
            run.workload = Workload::Handler(running);
        }
        self.publish(app);
        self.logs.append(app, "mar[api]", "Restarted wasm");
        Ok(vec!["wasm".to_owned()])
    }

    /// Runs a one-off command in the app's current slug and environment, as `run.N`.
    pub async fn run_command(
        &self,
        app: &AppName,
        command: &str,
        out: mar_build::Output,
        cancel: CancellationToken,
    ) -> Result<i32, DeployError> {
        let (spec, index) = self.one_off_spec(app, command)?;
        let result = mar_supervisor::one_off(
            &spec,
            move |line| out.line(line),
            ONE_OFF_TIME_LIMIT,
            cancel,
        )
        .await;
        self.one_off_ended(app, index, result)
    }

    /// Runs a one-off command as [`Self::run_command`] does, at a terminal of its own: for
    /// `mar run` typed at a terminal (an interactive shell, a REPL, a full-screen program).
    pub async fn run_at_terminal(
        &self,
        app: &AppName,
        command: &str,
        tty: mar_supervisor::terminal::Tty,
        input: tokio::sync::mpsc::Receiver<mar_supervisor::terminal::TerminalInput>,
        output: tokio::sync::mpsc::Sender<Vec<u8>>,
        cancel: CancellationToken,
    ) -> Result<i32, DeployError> {
        let (spec, index) = self.one_off_spec(app, command)?;
        let result = mar_supervisor::terminal::one_off_at_terminal(
            &spec,
            tty,
            input,
            output,
            ONE_OFF_TIME_LIMIT,
            cancel,
        )
        .await;
        self.one_off_ended(app, index, result)
    }

    /// Runs `command` as a one-off attached to its caller without a terminal: `input` is its
    /// stdin, its stdout and stderr go to `output` apart (`mar run` in a pipe or a script).
    pub async fn run_attached(
        &self,
        app: &AppName,
        command: &str,
        input: tokio::sync::mpsc::Receiver<mar_supervisor::attached::AttachedInput>,
        output: tokio::sync::mpsc::Sender<mar_supervisor::attached::AttachedOutput>,
        cancel: CancellationToken,
    ) -> Result<i32, DeployError> {
        let (spec, index) = self.one_off_spec(app, command)?;
        let result = mar_supervisor::attached::one_off_attached(
            &spec,
            input,
            output,
            ONE_OFF_TIME_LIMIT,
            cancel,
        )
        .await;
        self.one_off_ended(app, index, result)
    }

    /// The process a one-off runs as (`run.N`, from the current release), logged as started.
    fn one_off_spec(
        &self,
        app: &AppName,
        command: &str,
    ) -> Result<(mar_supervisor::ProcessSpec, u32), DeployError> {
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
        Ok((spec, index))
    }

    /// Logs how a one-off ended: its status, or why it was stopped.
    fn one_off_ended(
        &self,
        app: &AppName,
        index: u32,
        result: Result<i32, mar_supervisor::BootError>,
    ) -> Result<i32, DeployError> {
        let line = match &result {
            Ok(code) => format!("run.{index} exited with status {code}"),
            Err(mar_supervisor::BootError::Stopped) => {
                format!("run.{index} was stopped: its client hung up, or mar serve is stopping")
            }
            Err(e) => format!("run.{index} was stopped: {e}"),
        };
        self.logs.append(app, "mar[api]", &line);
        result.map_err(|e| DeployError::Boot(e.to_string()))
    }
}

/// How long a one-off process may run (`mar run`, at a terminal or not).
const ONE_OFF_TIME_LIMIT: Duration = Duration::from_secs(3600);
