//! Command-line parsing and the client commands. Each command that prints data also takes
//! `--json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mar_core::AppName;
use mar_sdk::Client;
use tokio_util::sync::CancellationToken;

/// mini-MAR: a self-hosted application runtime. Deploy with `git push`.
#[derive(Parser, Debug)]
#[command(name = "mar", version, about)]
pub struct Cli {
    /// The data directory of the local server.
    #[arg(long, global = true, env = "MAR_HOME")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The app (default: the app of the `mar` git remote in the current directory).
    #[arg(short = 'a', long = "app", global = true)]
    app: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the platform: router, API, git, builds and app processes.
    Serve {
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
        worker_threads: Option<u16>,
    },
    /// List apps.
    Apps,
    /// Create an app.
    #[command(name = "apps:create")]
    AppsCreate {
        /// Its name: lowercase letters, digits and '-', starting with a letter, at most 30.
        name: String,
    },
    /// Show an app.
    #[command(name = "apps:info")]
    AppsInfo {
        /// The app (or -a).
        name: Option<String>,
    },
    /// Destroy an app, its releases, processes, repository and logs.
    #[command(name = "apps:destroy")]
    AppsDestroy {
        /// The app.
        name: String,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Add a `mar` git remote for an app to the repository in the current directory.
    #[command(name = "git:remote")]
    GitRemote {
        /// The app (or -a).
        name: Option<String>,
    },
    /// Show config vars.
    Config,
    /// Set config vars (K=V ...); makes a release and restarts the app.
    #[command(name = "config:set")]
    ConfigSet {
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Unset config vars; makes a release and restarts the app.
    #[command(name = "config:unset")]
    ConfigUnset {
        /// Names.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List releases.
    Releases,
    /// List processes.
    Ps,
    /// Show (and with -t, follow) an app's log.
    Logs {
        /// Number of lines.
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Keep following new lines.
        #[arg(short = 't', long = "tail")]
        tail: bool,
        /// Only this process (`web.1`) or process type (`web`).
        #[arg(long)]
        ps: Option<String>,
        /// Only the app's output (`app`) or the platform's lines (`mar`).
        #[arg(long, value_parser = ["app", "mar"])]
        source: Option<String>,
    },
    /// Set instance counts: `mar ps:scale web=3 worker=1`.
    #[command(name = "ps:scale")]
    PsScale {
        /// TYPE=N pairs; with none, shows the formation.
        pairs: Vec<String>,
    },
    /// Restart processes one at a time, with no downtime: all, a type (`web`) or one (`web.2`).
    #[command(name = "ps:restart")]
    PsRestart {
        /// What to restart.
        target: Option<String>,
    },
    /// Set per-instance limits (memory, processes, open files); restarts the app.
    #[command(name = "ps:resize")]
    PsResize {
        /// Memory per instance, like 512M or 1G.
        #[arg(long)]
        memory: Option<String>,
        /// Processes and threads per instance.
        #[arg(long)]
        pids: Option<String>,
        /// Open files per process.
        #[arg(long)]
        nofile: Option<String>,
    },
    /// Show one release.
    #[command(name = "releases:info")]
    ReleasesInfo {
        /// `vN` or `N`.
        version: String,
    },
    /// Roll back to an earlier release (default: the one before the current).
    Rollback {
        /// `vN` or `N`.
        version: Option<String>,
    },
    /// Run a one-off command in the app's environment and slug: `mar run -a APP -- CMD…`.
    Run {
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List an app's custom domains.
    Domains {
        /// The app (or -a).
        name: Option<String>,
    },
    /// Route a custom domain to an app: `mar domains:add APP www.example.com`.
    #[command(name = "domains:add")]
    DomainsAdd {
        /// `APP DOMAIN`, or `DOMAIN` with -a.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Stop routing a custom domain: `mar domains:remove APP www.example.com`.
    #[command(name = "domains:remove")]
    DomainsRemove {
        /// `APP DOMAIN`, or `DOMAIN` with -a.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Print the admin API token.
    #[command(name = "auth:token")]
    AuthToken,
    /// Git hooks (run by git during a push).
    #[command(hide = true)]
    Hook {
        /// The hook's name.
        name: String,
    },
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Path::new(&h).join(".mar"),
        _ => PathBuf::from("mar-data"),
    }
}

impl Cli {
    /// The runtime threads `mar serve` asked for; `None` for tokio's default.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Serve { worker_threads, .. } => worker_threads.map(usize::from),
            _ => None,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    match &cli.command {
        Command::Serve {
            listen,
            domain,
            https_listen,
            router_threads,
            ..
        } => {
            let overrides = mar_runtime::Overrides {
                listen: listen.clone(),
                domain: domain.clone(),
                https_listen: https_listen.clone(),
                router_threads: router_threads.clone(),
            };
            return serve(&data_dir, overrides).await;
        }
        Command::Hook { name } if name == "pre-receive" => return crate::hook::pre_receive().await,
        Command::Hook { name } => bail!("unknown hook {name:?}"),
        Command::AuthToken => {
            let token = token(&data_dir)?;
            println!("{token}");
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let client = client(&data_dir)?;
    let json = cli.json;
    match cli.command {
        Command::Apps => {
            let apps = client.apps().await?;
            if json {
                return print_json(&apps);
            }
            println!("=== Apps");
            for a in apps {
                println!("{}", a.name);
            }
        }
        Command::AppsCreate { name } => {
            AppName::parse(&name)?;
            let app = client.create_app(&name).await?;
            if json {
                return print_json(&app);
            }
            println!("Creating {}... done", app.name);
            println!("{} | {}", app.web_url, app.git_url);
        }
        Command::AppsInfo { name } => {
            let app = resolve_app(name.or(cli.app))?;
            let info = client.app(app.as_str()).await?;
            if json {
                return print_json(&info);
            }
            println!("=== {}", info.name);
            println!("Web URL:   {}", info.web_url);
            println!("Git URL:   {}", info.git_url);
            println!("State:     {}", info.state);
            println!(
                "Release:   {}",
                info.release.map_or("none".to_owned(), |v| format!("v{v}"))
            );
            let dynos: Vec<String> = info
                .structure
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("Formation: {}", dynos.join(" "));
            println!("Created:   {}", info.created_at);
        }
        Command::AppsDestroy { name, confirm } => {
            let app = AppName::parse(&name)?;
            if confirm.as_deref() != Some(app.as_str()) {
                bail!(
                    "this destroys {app}, its releases, repository and logs; run again with --confirm {app}"
                );
            }
            client.destroy_app(app.as_str()).await?;
            if json {
                return print_json(&serde_json::json!({ "destroyed": app.as_str() }));
            }
            println!("Destroying {app}... done");
        }
        Command::GitRemote { name } => {
            let app = resolve_app(name.or(cli.app))?;
            let info = client.app(app.as_str()).await?;
            let base = client.base().to_owned();
            let (scheme, rest) = base.split_once("://").unwrap_or(("http", base.as_str()));
            let token = api_token(&data_dir)?;
            let url = format!("{scheme}://git:{token}@{rest}/{}.git", info.name);
            let repo = git2::Repository::discover(".")
                .context("not inside a git repository; run `git init` first")?;
            if repo.find_remote("mar").is_ok() {
                repo.remote_set_url("mar", &url)?;
            } else {
                repo.remote("mar", &url)?;
            }
            if json {
                return print_json(&serde_json::json!({ "remote": "mar", "app": info.name }));
            }
            println!("set git remote mar to {scheme}://{rest}/{}.git", info.name);
        }
        Command::Config => {
            let app = resolve_app(cli.app)?;
            let config = client.config(app.as_str()).await?;
            if json {
                return print_json(&config);
            }
            print_config(&app, &config);
        }
        Command::ConfigSet { pairs } => {
            let app = resolve_app(cli.app)?;
            let mut changes = BTreeMap::new();
            for pair in pairs {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("{pair:?} is not KEY=VALUE");
                };
                changes.insert(k.to_owned(), Some(v.to_owned()));
            }
            let keys: Vec<String> = changes.keys().cloned().collect();
            eprint!("Setting {} and restarting {app}... ", keys.join(", "));
            let config = client.update_config(app.as_str(), &changes).await?;
            let release = client
                .releases(app.as_str())
                .await?
                .first()
                .map(|r| r.version);
            eprintln!("done, v{}", release.unwrap_or(0));
            if json {
                return print_json(&config);
            }
            let shown: BTreeMap<String, String> = config
                .into_iter()
                .filter(|(k, _)| keys.contains(k))
                .collect();
            print_config(&app, &shown);
        }
        Command::ConfigUnset { keys } => {
            let app = resolve_app(cli.app)?;
            let changes: BTreeMap<String, Option<String>> =
                keys.iter().map(|k| (k.clone(), None)).collect();
            eprint!("Unsetting {} and restarting {app}... ", keys.join(", "));
            let config = client.update_config(app.as_str(), &changes).await?;
            let release = client
                .releases(app.as_str())
                .await?
                .first()
                .map(|r| r.version);
            eprintln!("done, v{}", release.unwrap_or(0));
            if json {
                return print_json(&config);
            }
        }
        Command::Releases => {
            let app = resolve_app(cli.app)?;
            let releases = client.releases(app.as_str()).await?;
            if json {
                return print_json(&releases);
            }
            println!("=== {app} Releases");
            for r in releases {
                let mark = if r.current { " (current)" } else { "" };
                println!(
                    "v{:<4} {:<40} {}{mark}",
                    r.version, r.description, r.created_at
                );
            }
        }
        Command::Ps => {
            let app = resolve_app(cli.app)?;
            let ps = client.processes(app.as_str()).await?;
            if json {
                return print_json(&ps);
            }
            let mut last_type = String::new();
            for p in ps {
                if p.process_type != last_type {
                    println!("=== {}: `{}`", p.process_type, p.command);
                    last_type = p.process_type.clone();
                }
                let uptime = p
                    .uptime_secs
                    .map_or(String::new(), |s| format!(" for {s}s"));
                let port = p.port.map_or(String::new(), |p| format!(" port {p}"));
                let pid = p.pid.map_or(String::new(), |p| format!(" pid {p}"));
                println!(
                    "{}: {}{uptime} (v{}){port}{pid} restarts {}",
                    p.dyno, p.state, p.release, p.restarts
                );
            }
        }
        Command::Logs {
            num,
            tail,
            ps,
            source,
        } => {
            let app = resolve_app(cli.app)?;
            let filter = mar_sdk::LogFilter { ps, source };
            if tail {
                let mut lines = client.follow_logs(app.as_str(), num, &filter).await?;
                while let Some(line) = lines.next_line().await? {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let entries = client.logs(app.as_str(), num, 0, &filter).await?;
            if json {
                return print_json(&entries);
            }
            for e in entries {
                println!("{} {}", e.time, e.log);
            }
        }
        Command::Domains { name } => {
            let app = resolve_app(name.or(cli.app))?;
            let domains = client.domains(app.as_str()).await?;
            if json {
                return print_json(&domains);
            }
            println!("=== {app} Custom Domains");
            for d in domains {
                println!("{d}");
            }
        }
        Command::DomainsAdd { args } => {
            let (app, domain) = app_and_domain(args, cli.app)?;
            let domains = client.add_domain(app.as_str(), &domain).await?;
            if json {
                return print_json(&domains);
            }
            println!("Added {domain} to {app}: point its DNS at this server");
        }
        Command::DomainsRemove { args } => {
            let (app, domain) = app_and_domain(args, cli.app)?;
            let domains = client.remove_domain(app.as_str(), &domain).await?;
            if json {
                return print_json(&domains);
            }
            println!("Removed {domain} from {app}");
        }
        Command::PsScale { pairs } => {
            let app = resolve_app(cli.app)?;
            let formation = if pairs.is_empty() {
                client.formation(app.as_str()).await?
            } else {
                let mut counts = BTreeMap::new();
                for pair in &pairs {
                    let parsed = pair
                        .split_once('=')
                        .and_then(|(t, n)| n.parse::<u32>().ok().map(|n| (t.to_owned(), n)));
                    let Some((t, n)) = parsed else {
                        bail!("{pair:?} is not TYPE=N, like web=2");
                    };
                    counts.insert(t, n);
                }
                eprint!("Scaling {app} processes... ");
                let f = client.scale(app.as_str(), &counts).await?;
                eprintln!("done");
                f
            };
            if json {
                return print_json(&formation);
            }
            let shown: Vec<String> = formation
                .iter()
                .map(|f| format!("{}={}", f.process_type, f.quantity))
                .collect();
            println!("{}", shown.join(" "));
        }
        Command::PsRestart { target } => {
            let app = resolve_app(cli.app)?;
            eprint!(
                "Restarting {} of {app}, one at a time... ",
                target.as_deref().unwrap_or("every process")
            );
            let restarted = client.restart(app.as_str(), target.as_deref()).await?;
            eprintln!("done");
            if json {
                return print_json(&restarted);
            }
            println!("restarted {}", restarted.join(", "));
        }
        Command::PsResize {
            memory,
            pids,
            nofile,
        } => {
            let app = resolve_app(cli.app)?;
            let mut changes = BTreeMap::new();
            for (k, v) in [
                ("MAR_MEMORY_LIMIT", memory),
                ("MAR_PIDS_LIMIT", pids),
                ("MAR_NOFILE_LIMIT", nofile),
            ] {
                if let Some(v) = v {
                    changes.insert(k.to_owned(), Some(v));
                }
            }
            if changes.is_empty() {
                let config = client.config(app.as_str()).await?;
                let shown: BTreeMap<String, String> = config
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("MAR_") && k.ends_with("_LIMIT"))
                    .collect();
                if json {
                    return print_json(&shown);
                }
                print_config(&app, &shown);
                return Ok(ExitCode::SUCCESS);
            }
            eprint!("Resizing {app} and restarting... ");
            let config = client.update_config(app.as_str(), &changes).await?;
            eprintln!("done");
            if json {
                return print_json(&config);
            }
        }
        Command::ReleasesInfo { version } => {
            let app = resolve_app(cli.app)?;
            let v = parse_version(&version)?;
            let r = client.release(app.as_str(), v).await?;
            if json {
                return print_json(&r);
            }
            println!(
                "=== Release v{}{}",
                r.version,
                if r.current { " (current)" } else { "" }
            );
            println!("Change:      {}", r.description);
            println!("When:        {}", r.created_at);
            println!("Commit:      {}", r.commit.as_deref().unwrap_or("-"));
            println!("Buildpacks:  {}", r.buildpacks.join(", "));
            println!("Slug size:   {} bytes", r.slug_size);
            let types: Vec<String> = r
                .process_types
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            println!("Processes:   {}", types.join("; "));
            print_config(&app, &r.config.unwrap_or_default());
        }
        Command::Rollback { version } => {
            let app = resolve_app(cli.app)?;
            let v = version.as_deref().map(parse_version).transpose()?;
            eprint!("Rolling back {app}... ");
            let r = client.rollback(app.as_str(), v).await?;
            eprintln!("done, v{}", r.version);
            if json {
                return print_json(&r);
            }
            println!("{}", r.description);
        }
        Command::Run { command } => {
            let app = resolve_app(cli.app)?;
            let mut lines = client.run(app.as_str(), &command.join(" ")).await?;
            let mut result = None;
            while let Some(line) = lines.next_line().await? {
                match line.strip_prefix(mar_sdk::types::BUILD_RESULT_MARK) {
                    Some(json) => {
                        result = serde_json::from_str::<mar_sdk::types::RunResult>(json).ok()
                    }
                    None => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{line}")?;
                        out.flush()?;
                    }
                }
            }
            return match result {
                Some(mar_sdk::types::RunResult {
                    exit_code: Some(code),
                    ..
                }) => Ok(ExitCode::from(
                    u8::try_from(code.clamp(0, 255)).unwrap_or(1),
                )),
                Some(mar_sdk::types::RunResult { error: Some(e), .. }) => bail!("{e}"),
                _ => bail!("the command's output ended without an exit status"),
            };
        }
        Command::Serve { .. } | Command::Hook { .. } | Command::AuthToken => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `[APP] DOMAIN` (the app may also come from -a or the git remote).
fn app_and_domain(mut args: Vec<String>, app: Option<String>) -> anyhow::Result<(AppName, String)> {
    let domain = args.pop().context("which domain?")?;
    let app = resolve_app(args.pop().or(app))?;
    Ok((app, domain))
}

fn parse_version(v: &str) -> anyhow::Result<i64> {
    v.trim_start_matches('v')
        .parse()
        .with_context(|| format!("{v:?} is not a release version like v3"))
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

fn print_config(app: &AppName, config: &BTreeMap<String, String>) {
    println!("=== {app} Config Vars");
    let width = config.keys().map(String::len).max().unwrap_or(0) + 1;
    for (k, v) in config {
        println!("{:<width$} {v}", format!("{k}:"));
    }
}

/// The app named on the command line, else the app of the `mar` git remote.
fn resolve_app(name: Option<String>) -> anyhow::Result<AppName> {
    if let Some(name) = name {
        return Ok(AppName::parse(&name)?);
    }
    let from_remote = git2::Repository::discover(".").ok().and_then(|repo| {
        let remote = repo.find_remote("mar").ok()?;
        let url = remote.url()?.to_owned();
        let last = url.trim_end_matches('/').rsplit('/').next()?.to_owned();
        AppName::parse(last.strip_suffix(".git").unwrap_or(&last)).ok()
    });
    from_remote.context("no app given: pass -a APP, or run inside a repository with a `mar` git remote (`mar git:remote APP`)")
}

fn token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the admin token at {} (has `mar serve` run with this data directory?)",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

fn api_token(data_dir: &Path) -> anyhow::Result<String> {
    match std::env::var("MAR_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => token(data_dir),
    }
}

/// The API client: `MAR_API_URL` and `MAR_TOKEN`, else the local server's data directory.
fn client(data_dir: &Path) -> anyhow::Result<Client> {
    let url = match std::env::var("MAR_API_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            let path = data_dir.join("serve.json");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("no running mar server found ({} is missing): start `mar serve`, or set MAR_API_URL and MAR_TOKEN", path.display())
            })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is corrupt", path.display()))?;
            v["url"]
                .as_str()
                .context("serve.json has no url")?
                .to_owned()
        }
    };
    Ok(Client::new(&url, &api_token(data_dir)?))
}

async fn serve(data_dir: &Path, overrides: mar_runtime::Overrides) -> anyhow::Result<ExitCode> {
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
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // The runtime shuts itself down when a router thread fails.
        _ = shutdown.cancelled() => {}
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
