//! The talk's demos, deployed with `git push` from a clean copy of `examples/` and driven by
//! their real clients: pages in headless Chromium (Debian's, driven by playwright-core from
//! the npm registry), Qt programs built here with qmake. The todo app, two pages at a time,
//! changes pushed through MWS; the WebChannel chat, a Qt program and a page meeting at a
//! relay hosted on mini-MAR. Screenshots of a failing page are kept under
//! `target/test-artifacts/`.

use mar_tests::{MarServer, repo_root};

/// Builds the qmake project in `src` (a directory of the repository) in a scratch copy, as a
/// user would: `qmake`, then `make`.
pub(crate) fn qmake_build(src: &str) -> tempfile::TempDir {
    let build = mar_tests::scratch_dir();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo_root().join(src).join("."))
        .arg(build.path())
        .status()
        .unwrap();
    assert!(status.success());
    let qmake = ["qmake", "/usr/lib/qt5/bin/qmake"]
        .into_iter()
        .find(|q| {
            std::process::Command::new(q)
                .args(["-query", "QT_VERSION"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no qmake: run `bash scripts/test.sh`, which installs Qt");
    for (cmd, args) in [(qmake, vec![]), ("make", vec!["-j2"])] {
        let out = std::process::Command::new(cmd)
            .args(&args)
            .current_dir(build.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd} in {src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    build
}

/// A command that runs `program args…` with `name` resolving to 127.0.0.1: this machine's
/// resolver knows no `APP.localhost`, so the program gets a hosts file of its own in a mount
/// namespace of its own.
pub(crate) fn with_host(
    dir: &std::path::Path,
    name: &str,
    program: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost {name}\n")).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
        .arg("sh")
        .arg(&hosts)
        .arg(program)
        .args(args);
    cmd
}

/// Runs the browser driver; its output lines.
async fn drive(script: &str, args: Vec<String>) -> String {
    mar_tests::run_node(&mar_tests::browser_drivers(), script, args, Vec::new())
        .await
        .stdout
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

/// The WebChannel chat: the relay deployed with `git push`, the Qt program (built with qmake)
/// publishing its `core` object through it, and the page in Chromium calling it: a message
/// typed in the page reaches the Qt program and its answer comes back.
#[tokio::test]
async fn the_webchannel_chat_joins_a_qt_program_and_a_page_through_a_hosted_relay() {
    let mar = MarServer::start();
    mar.create_app("chat");
    let repo = mar.repo_from(&repo_root().join("examples/webchannel-chat"));
    let push = repo.push(&mar.git_url("chat"), "main");
    assert!(push.ok(), "push failed:\n{}", push.all());
    assert!(push.stderr.contains("Qt app detected"), "{}", push.stderr);

    let build = qmake_build("examples/webchannel-chat/qt-client");
    let url = format!("ws://chat.localhost:{}/publish", mar.addr.port());
    let out_file = build.path().join("chat.out");
    let mut qt = with_host(
        build.path(),
        "chat.localhost",
        &build.path().join("chat"),
        &[&url],
    )
    .stdout(std::fs::File::create(&out_file).unwrap())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    mar_tests::eventually(std::time::Duration::from_secs(10), || {
        let out_file = out_file.clone();
        async move {
            std::fs::read_to_string(&out_file)
                .unwrap_or_default()
                .contains("connected to the relay")
                .then_some(())
        }
    })
    .await;
    let shots = repo_root().join("target/test-artifacts");
    let page = format!("http://chat.localhost:{}/", mar.addr.port());
    let out = drive("chat.js", vec![page, shots.display().to_string()]).await;
    assert!(out.contains("the Qt program answered"), "{out}");
    let _ = qt.kill();
    let _ = qt.wait();
    let said = std::fs::read_to_string(&out_file).unwrap();
    assert!(said.contains("Qt got: hi from the page"), "{said}");
}
