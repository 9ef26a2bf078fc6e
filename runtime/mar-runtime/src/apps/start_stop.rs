//! Apps across the server's own life: bringing every app back at its current release when
//! `mar serve` starts, stopping one app before it is destroyed, and stopping every app at
//! shutdown.

use mar_core::AppName;
use mar_store::NewRelease;

use super::{Apps, Running, Workload};

impl Apps {
    /// Brings every app back at its current release (at start). An app whose name became
    /// reserved is still restored (its processes run and it can be destroyed), but the platform
    /// answers at its host, so a warning names it.
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
            if let Some(r) = mar_core::reserved(name.as_str()) {
                eprintln!(
                    "mar: warning: app {name} has a reserved name: {}, so the app is unreachable there (or will be once the platform serves it); move it to another name (create a new app and push there) and destroy it with `mar apps:destroy {name} --confirm {name}`",
                    r.reason(&self.cfg.domain)
                );
            }
            // An app from before users had entries gets one; an app whose uid another app of
            // this host holds must not run, or the two would share a user.
            if let Some(uid) = app.uid
                && let Err(e) = mar_supervisor::users::ensure(uid, name.as_str(), self.paths.root())
            {
                eprintln!("mar: app {name} is not started: {e}");
                self.logs
                    .append(&name, "mar[api]", &format!("Not started: {e}"));
                continue;
            }
            match self.store.current_release(&name) {
                Ok(Some(rel)) if rel.wasm.is_some() => self.restore_wasm(&name, rel).await,
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
                            self.running()
                                .insert(name.clone(), Running::processes(rel, slots));
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

    /// Brings a WASM release back from its stored artifact.
    async fn restore_wasm(&self, name: &AppName, rel: mar_store::Release) {
        let loaded = match super::wasm::WasmRelease::of(rel.wasm.as_deref()) {
            Ok(Some(w)) => self.load_wasm(name, &rel.config, &w).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(running) => {
                self.logs.append(
                    name,
                    "mar[api]",
                    &format!("Restoring release v{} after start", rel.version),
                );
                self.running().insert(
                    name.clone(),
                    Running {
                        release: rel,
                        workload: Workload::Handler(running),
                    },
                );
            }
            Err(e) => self.logs.append(
                name,
                "mar[api]",
                &format!("Cannot restore v{}: {e}", rel.version),
            ),
        }
    }

    /// Stops an app's processes and forgets its routes (before destroying it).
    pub async fn stop_app(&self, app: &AppName) {
        let run = self.running().remove(app);
        self.routes.remove(app);
        if let Some(Running {
            workload: Workload::Processes(slots),
            ..
        }) = run
        {
            futures_util::future::join_all(slots.iter().map(|s| s.instance.stop())).await;
        }
    }

    /// Stops every process of every app (at shutdown).
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.running().drain().map(|(_, r)| r).collect();
        let stops = all
            .iter()
            .flat_map(|r| match &r.workload {
                Workload::Processes(slots) => slots.as_slice(),
                Workload::Handler(_) => &[],
            })
            .map(|s| s.instance.stop());
        futures_util::future::join_all(stops).await;
        if let Some(cg) = &self.cgroups {
            cg.sweep();
            cg.remove_root();
        }
        if let Some(fw) = &self.firewall {
            fw.remove().await;
        }
    }
}
