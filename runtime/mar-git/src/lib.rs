//! Git over smart HTTP: bare repositories per app (git2) and a CGI bridge to the real
//! `git http-backend`, whose `receive-pack` runs our `pre-receive` hook.
//!
//! The hook is where deploys happen: it runs inside the push, so its output reaches the pusher
//! as `remote:` lines while the build runs, and its exit status accepts or rejects the push.
//! During pre-receive the pushed objects sit in git's quarantine directory, visible only to the
//! hook's environment, so the hook itself (not the server) reads the pushed tree.
//!
//! Invariant: `mar-git` knows nothing about builds; the hook talks to the runtime over HTTP.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mar_core::AppName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// A response body streamed from `git http-backend`.
pub type GitBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Errors at this crate's edge.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A URL path that is not `/APP.git/<smart-HTTP endpoint>`.
    #[error("{0}")]
    BadPath(String),
    /// Repository creation or removal failed.
    #[error("git repository: {0}")]
    Repo(#[from] git2::Error),
    /// File system or process error.
    #[error("git: {0}")]
    Io(#[from] std::io::Error),
}

/// The smart-HTTP endpoints we serve; the dumb protocol's raw object paths are not exposed.
const ENDPOINTS: &[&str] = &["info/refs", "git-upload-pack", "git-receive-pack"];

/// Splits `/APP.git/rest` into the app and the endpoint, refusing anything else (including
/// `..` and unknown endpoints) with a message for the user.
pub fn parse_git_path(path: &str) -> Result<(AppName, &'static str), GitError> {
    if path.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(GitError::BadPath(format!(
            "invalid git path {path:?}: '..' and '.' are not allowed"
        )));
    }
    let rest = path.trim_start_matches('/');
    let Some((repo, endpoint)) = rest.split_once(".git/") else {
        return Err(GitError::BadPath(format!(
            "invalid git path {path:?}: expected /APP.git/..."
        )));
    };
    let app = AppName::parse(repo).map_err(|e| GitError::BadPath(e.to_string()))?;
    let endpoint = ENDPOINTS.iter().find(|e| **e == endpoint).ok_or_else(|| {
        GitError::BadPath(format!(
            "unsupported git endpoint {endpoint:?}: only smart HTTP is served"
        ))
    })?;
    Ok((app, endpoint))
}

/// Bare repositories under one root, served through `git http-backend`.
pub struct GitServer {
    root: PathBuf,
    hooks: PathBuf,
    /// Largest pack a push may send, in bytes (`receive.maxInputSize`).
    max_push: u64,
}

impl GitServer {
    /// Serves repositories under `root`; `hook_program` is run as the pre-receive hook of
    /// every repository (written into `hooks_dir`).
    pub fn new(
        root: &Path,
        hooks_dir: &Path,
        hook_program: &Path,
        max_push: u64,
    ) -> Result<Self, GitError> {
        std::fs::create_dir_all(root)?;
        std::fs::create_dir_all(hooks_dir)?;
        let quoted = hook_program.to_string_lossy().replace('\'', "'\\''");
        let script = format!(
            "#!/bin/sh\n# Written by mar serve at every start: deploys run inside the push.\nexec '{quoted}' hook pre-receive\n"
        );
        let hook = hooks_dir.join("pre-receive");
        std::fs::write(&hook, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            root: root.to_owned(),
            hooks: hooks_dir.to_owned(),
            max_push,
        })
    }

    /// The bare repository of `app`.
    pub fn repo_path(&self, app: &AppName) -> PathBuf {
        self.root.join(format!("{app}.git"))
    }

    /// Creates `app`'s bare repository (idempotent), with `main` as its default branch.
    pub fn create_repo(&self, app: &AppName) -> Result<(), GitError> {
        let path = self.repo_path(app);
        if path.exists() {
            return Ok(());
        }
        let mut opts = git2::RepositoryInitOptions::new();
        opts.bare(true).initial_head("main");
        git2::Repository::init_opts(&path, &opts)?;
        Ok(())
    }

    /// Deletes `app`'s repository.
    pub fn delete_repo(&self, app: &AppName) -> Result<(), GitError> {
        match std::fs::remove_dir_all(self.repo_path(app)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Runs one smart-HTTP request through `git http-backend`. `hook_env` reaches the
    /// pre-receive hook (git passes its environment down).
    pub async fn serve(
        &self,
        app: &AppName,
        endpoint: &str,
        req: Request<mar_http::Body>,
        remote: std::net::SocketAddr,
        hook_env: &[(String, String)],
    ) -> Result<Response<GitBody>, GitError> {
        self.create_repo(app)?;
        let (parts, body) = req.into_parts();
        let header = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut cmd = Command::new("git");
        cmd.arg("http-backend")
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", format!("/{app}.git/{endpoint}"))
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("REMOTE_USER", "mar")
            .env("REMOTE_ADDR", remote.ip().to_string())
            .env("GIT_HTTP_MAX_REQUEST_BUFFER", "100M")
            // Pushes are authorized by the router already; receive-pack is off by default in
            // http-backend for anonymous users, so say so. The hooks directory is shared by all
            // repositories, and repositories owned by another uid are still ours.
            .env("GIT_CONFIG_COUNT", "4")
            .env("GIT_CONFIG_KEY_0", "http.receivepack")
            .env("GIT_CONFIG_VALUE_0", "true")
            .env("GIT_CONFIG_KEY_1", "core.hooksPath")
            .env("GIT_CONFIG_VALUE_1", &self.hooks)
            .env("GIT_CONFIG_KEY_2", "safe.directory")
            .env("GIT_CONFIG_VALUE_2", "*")
            // A pack past twice the limit is refused by receive-pack itself before it fills the
            // disk; the pusher then sees only a broken connection, which is why the limit
            // proper (with its message) is the hook's, on the tree it unpacks.
            .env("GIT_CONFIG_KEY_3", "receive.maxInputSize")
            .env(
                "GIT_CONFIG_VALUE_3",
                self.max_push.saturating_mul(2).to_string(),
            )
            .envs(hook_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(v) = header(header::CONTENT_TYPE) {
            cmd.env("CONTENT_TYPE", v);
        }
        if let Some(v) = header(header::CONTENT_LENGTH) {
            cmd.env("CONTENT_LENGTH", v);
        }
        if let Some(v) = header(header::CONTENT_ENCODING) {
            cmd.env("HTTP_CONTENT_ENCODING", v);
        }
        if let Some(v) = header(header::HeaderName::from_static("git-protocol")) {
            cmd.env("GIT_PROTOCOL", v);
        }
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take();
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr"))?;

        // Feed the request body to the CGI while we read its answer: a large push must not be
        // buffered in memory, and receive-pack starts answering before the body ends.
        tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let (Some(data), Some(stdin)) = (frame.data_ref(), stdin.as_mut())
                    && stdin.write_all(data).await.is_err()
                {
                    break;
                }
            }
            drop(stdin.take());
        });
        let app_name = app.to_string();
        tokio::spawn(async move {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            let _ = child.wait().await;
            if !err.trim().is_empty() {
                tracing::info!(app = %app_name, "git http-backend: {}", err.trim());
            }
        });

        // Read the CGI header block (ends with an empty line), then stream the rest.
        let mut head = Vec::new();
        let mut buf = [0u8; 8192];
        let (header_end, body_start) = loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                return Err(GitError::Io(std::io::Error::other(
                    "git http-backend ended without a response",
                )));
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break (i, i + 4);
            }
            if let Some(i) = find(&head, b"\n\n") {
                break (i, i + 2);
            }
            if head.len() > 64 * 1024 {
                return Err(GitError::Io(std::io::Error::other(
                    "git http-backend sent oversized headers",
                )));
            }
        };
        let mut resp = Response::builder().status(StatusCode::OK);
        for line in String::from_utf8_lossy(&head[..header_end]).lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                let code = value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse::<u16>().ok());
                if let Some(code) = code.and_then(|c| StatusCode::from_u16(c).ok()) {
                    resp = resp.status(code);
                }
            } else if let Ok(v) = HeaderValue::from_str(value) {
                resp = resp.header(name.trim(), v);
            }
        }
        let rest = Bytes::copy_from_slice(&head[body_start..]);
        let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(rest) });
        let stream = first
            .chain(tokio_util::io::ReaderStream::new(stdout))
            .map_ok(Frame::data);
        let body = StreamBody::new(stream).boxed_unsync();
        resp.body(body)
            .map_err(|e| GitError::Io(std::io::Error::other(e)))
    }
}

use futures_util::StreamExt;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_paths() {
        let (app, ep) = parse_git_path("/echo.git/info/refs").unwrap();
        assert_eq!((app.as_str(), ep), ("echo", "info/refs"));
        assert_eq!(
            parse_git_path("/echo.git/git-receive-pack").unwrap().1,
            "git-receive-pack"
        );
        for bad in [
            "/../echo.git/info/refs",
            "/echo.git/../../etc/passwd",
            "/Echo.git/info/refs",
            "/echo/info/refs",
            "/echo.git/objects/ab/cdef",
            "/echo.git/HEAD",
            "/a/b.git/info/refs",
        ] {
            assert!(parse_git_path(bad).is_err(), "{bad}");
        }
        assert!(
            parse_git_path("/x.git/../y")
                .unwrap_err()
                .to_string()
                .contains("'..'")
        );
    }

    #[test]
    fn repos_are_bare_with_main() {
        let d = tempfile::tempdir().unwrap();
        let g = GitServer::new(
            &d.path().join("repos"),
            &d.path().join("hooks"),
            Path::new("/bin/true"),
            1 << 30,
        )
        .unwrap();
        let app = AppName::parse("a").unwrap();
        g.create_repo(&app).unwrap();
        let repo = git2::Repository::open_bare(g.repo_path(&app)).unwrap();
        assert!(repo.is_bare());
        assert!(d.path().join("hooks/pre-receive").is_file());
        g.delete_repo(&app).unwrap();
        assert!(!g.repo_path(&app).exists());
    }
}
