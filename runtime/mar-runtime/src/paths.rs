//! The data directory's layout, in one place. See ARCHITECTURE.md for the tree.

use std::path::{Path, PathBuf};

use mar_core::AppName;

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The layout rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `mar.db`: the state database.
    pub fn db(&self) -> PathBuf {
        self.root.join("mar.db")
    }
    /// `token`: the admin API token (mode 0600).
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }
    /// `metrics_token`: the token that reads `/metrics` and nothing else (mode 0600), for a
    /// Prometheus scraper.
    pub fn metrics_token(&self) -> PathBuf {
        self.root.join("metrics_token")
    }
    /// `console_password`: the web console's password as an argon2id hash (mode 0600), when
    /// one is set (`mar console:password`).
    pub fn console_password(&self) -> PathBuf {
        self.root.join("console_password")
    }
    /// `serve.json`: where the running server listens, for the CLI.
    pub fn serve_file(&self) -> PathBuf {
        self.root.join("serve.json")
    }
    /// `repos/`: bare git repositories.
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    /// `hooks/`: the git hooks shared by every repository.
    pub fn hooks(&self) -> PathBuf {
        self.root.join("hooks")
    }
    /// `buildpacks/`: the built-in buildpacks, unpacked from the binary at start.
    pub fn buildpacks(&self) -> PathBuf {
        self.root.join("buildpacks")
    }
    /// `logs/`: per-app logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `builds/`: scratch space of builds in progress.
    pub fn builds(&self) -> PathBuf {
        self.root.join("builds")
    }
    /// `apps/APP/`: everything else of one app.
    pub fn app(&self, app: &AppName) -> PathBuf {
        self.root.join("apps").join(app.as_str())
    }
    /// `apps/APP/cache/`: the build cache, kept between builds.
    pub fn cache(&self, app: &AppName) -> PathBuf {
        self.app(app).join("cache")
    }
    /// `apps/APP/slugs/ID.tar.gz`: a slug.
    pub fn slug(&self, app: &AppName, id: &str) -> PathBuf {
        self.app(app).join("slugs").join(format!("{id}.tar.gz"))
    }
    /// `apps/APP/wasm/`: root's copies of WebAssembly releases' modules (`ID.wasm`) and their
    /// precompiled artifacts (`ID.KEY.cwasm`, KEY the engine's compatibility hash); mode 0700,
    /// as nothing in it is the app's to write.
    pub fn wasm_dir(&self, app: &AppName) -> PathBuf {
        self.app(app).join("wasm")
    }
    /// `apps/APP/run/ID/`: an unpacked slug that processes run from.
    pub fn run_dir(&self, app: &AppName, id: &str) -> PathBuf {
        self.app(app).join("run").join(id)
    }
}
