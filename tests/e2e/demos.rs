//! The talk's demos, deployed with `git push` from a clean copy of `examples/` and driven by
//! their real clients: the todo app's page in headless Chromium (Debian's, driven by
//! playwright-core from the npm registry), two pages at a time, changes pushed through MWS.
//! Screenshots of a failing page are kept under `target/test-artifacts/`.

use mar_tests::{MarServer, repo_root};

/// Runs the browser driver; its output lines.
async fn drive(script: &str, args: Vec<String>) -> String {
    let dir = repo_root().join("tests/fixtures/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "no playwright-core in {} or no /usr/bin/chromium: run `bash scripts/test.sh`, which installs them",
        dir.display()
    );
    let script = script.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// The todo app: signed-in users' pages get their own changes within a second and never
/// another user's (the server's relay of EDS's webhook to private sockets); then, linked, the
/// public variant with no server code in the loop.
#[tokio::test]
async fn the_todo_demo_pushes_changes_between_browser_pages() {
    let mar = MarServer::start();
    mar.create_app("todo");
    mar.offline_npm("todo");
    mar.create_service("eds", "todo-data");
    mar.create_service("mws", "todo-push");
    for s in ["todo-data", "todo-push"] {
        let out = mar.mar(&["services:attach", s, "-a", "todo"]);
        assert!(out.ok(), "{}", out.all());
    }
    let repo = mar.repo_from(&repo_root().join("examples/todo"));
    let push = repo.push(&mar.git_url("todo"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    let base = format!("http://todo.localhost:{}", mar.addr.port());
    let shots = repo_root().join("target/test-artifacts");

    let out = drive(
        "todo.js",
        vec![base.clone(), "private".into(), shots.display().to_string()],
    )
    .await;
    for line in [
        "b saw milk in ",
        "a saw it done",
        "a lists 1, c lists 1",
        "b saw the delete",
        "DONE",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }

    let out = mar.mar(&["services:link", "todo-data", "todo-push"]);
    assert!(out.ok(), "{}", out.all());
    let out = drive(
        "todo.js",
        vec![base, "public".into(), shots.display().to_string()],
    )
    .await;
    for line in ["b saw public milk in ", "a saw the delete", "DONE"] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}
