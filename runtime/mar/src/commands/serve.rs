//! `mar serve`: runs the platform in this process until SIGINT or SIGTERM, then shuts it down
//! cleanly (drain requests, stop apps).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

/// The options of `mar serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080, or `listen` in mar.yaml].
    #[arg(long, env = "MAR_LISTEN")]
    listen: Option<String>,
    /// Apps are served at APP.DOMAIN [default: localhost, or `domain` in mar.yaml].
    #[arg(long, env = "MAR_DOMAIN")]
    domain: Option<String>,
    /// Also serve HTTPS (and h2) here [or `https_listen` in mar.yaml].
    #[arg(long, env = "MAR_HTTPS_LISTEN")]
    https_listen: Option<String>,
    /// Threads serving requests, each with its own listener and event loop, as nginx's
    /// workers: a count or `auto` (one per core) [default: 1, or `router_threads` in
    /// mar.yaml]. One thread serves tens of thousands of requests a second.
    #[arg(long, env = "MAR_ROUTER_THREADS")]
    router_threads: Option<String>,
    /// Threads of the platform's own runtime (API, git, builds, supervision) [default:
    /// one per core]. With 1, a single-threaded scheduler.
    #[arg(long, env = "MAR_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) worker_threads: Option<u16>,
}

impl ServeArgs {
    /// What the command line overrides of `mar.yaml`.
    pub(crate) fn overrides(&self) -> mar_runtime::Overrides {
        mar_runtime::Overrides {
            listen: self.listen.clone(),
            domain: self.domain.clone(),
            https_listen: self.https_listen.clone(),
            router_threads: self.router_threads.clone(),
        }
    }
}

/// Runs the platform with the data in `data_dir`.
pub(crate) async fn serve(
    data_dir: &Path,
    overrides: mar_runtime::Overrides,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    let exe = std::env::current_exe().context("cannot find the mar executable")?;
    let cfg = match mar_runtime::Config::load(&data_dir, &overrides, exe) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mar: {e}");
            // EX_USAGE: bad configuration, nothing was started.
            return Ok(ExitCode::from(64));
        }
    };
    let domain = cfg.domain.clone();
    let shutdown = CancellationToken::new();
    let started = mar_runtime::start(cfg, shutdown.clone()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mar listening on http://{}", started.addr)?;
        if let Some(a) = started.https_addr {
            writeln!(out, "mar listening on https://{a}")?;
        }
        writeln!(
            out,
            "apps are served at http://APP.{domain}:{}/; data in {}",
            started.addr.port(),
            data_dir.display()
        )?;
        writeln!(
            out,
            "the web console is at http://{domain}:{}/ (sign in with the token `mar auth:token` prints)",
            started.addr.port()
        )?;
        out.flush()?;
    }
    use tokio::signal::unix::{SignalKind, signal};
    // Made once, before the loop: a signal that comes while a reload runs is still seen.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // SIGHUP reads the certificates mar.yaml names again, as nginx's reload does (they are
    // also reloaded when their files change); it does not stop the server.
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            Some(()) = hangup.recv() => started.reload_certificates().await,
            // The runtime shuts itself down when a router thread fails.
            _ = shutdown.cancelled() => break,
        }
    }
    eprintln!("mar: shutting down: draining requests and stopping apps");
    shutdown.cancel();
    if !started.wait().await {
        eprintln!("mar: stopped after a router thread failed");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("mar: stopped");
    Ok(ExitCode::SUCCESS)
}
