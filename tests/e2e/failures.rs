//! Bad input gets a clear error and loses nothing: every failed push is rejected with a
//! message, and the previous release keeps serving.

use mar_tests::{MarServer, repo_root};

fn fixture(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/fixtures/apps").join(name)
}

/// Deploys shell-hello (as v2, after the offline config) so that each failure below can prove
/// that release still serves.
async fn serving_app(mar: &MarServer, app: &str) {
    mar.create_app(app);
    // Every build of these tests installs offline (only the pip failure test needs it, but
    // then every app starts with the same one release before its push).
    mar.offline_pip(app);
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url(app), "main");
    assert!(push.ok(), "{}", push.all());
}

async fn assert_still_serving_the_first_push(mar: &MarServer, app: &str) {
    let r = mar.get(&format!("{app}.localhost"), "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Hello from mini-MAR"));
    let releases = mar.mar(&["releases", "-a", app, "--json"]);
    let releases: serde_json::Value = serde_json::from_str(&releases.stdout).unwrap();
    // v1 is the config change that keeps pip off the network, v2 the first push.
    assert_eq!(
        releases.as_array().unwrap().len(),
        2,
        "a failed push made a release: {releases}"
    );
}

fn assert_rejected(push: &mar_tests::CmdOutput, expected: &[&str]) {
    assert!(!push.ok(), "push should fail:\n{}", push.all());
    assert!(
        push.stderr
            .contains("[remote rejected] main -> main (pre-receive hook declined)"),
        "{}",
        push.stderr
    );
    push.assert_says(expected);
}

#[tokio::test]
async fn bad_procfiles_are_refused_with_their_line() {
    let mar = MarServer::start();
    serving_app(&mar, "proc").await;
    let bad = mar.repo_from(&fixture("bad-procfile"));
    let push = bad.push(&mar.git_url("proc"), "main");
    assert_rejected(
        &push,
        &[
            "remote:  !     Procfile line 2: expected `TYPE: command`, found \"this line has no colon\"",
            "the previous release keeps serving",
        ],
    );
    let dup = mar.repo_from(&fixture("duplicate-procfile"));
    let push = dup.push(&mar.git_url("proc"), "main");
    assert_rejected(
        &push,
        &["Procfile line 3: process type web is declared twice (first on line 1)"],
    );
    assert_still_serving_the_first_push(&mar, "proc").await;
}

#[tokio::test]
async fn undetectable_app_and_failing_buildpacks_are_rejected() {
    let mar = MarServer::start();
    serving_app(&mar, "fails").await;
    let none = mar.repo_from(&fixture("no-buildpack"));
    let push = none.push(&mar.git_url("fails"), "main");
    assert_rejected(&push, &["Unable to select a buildpack"]);

    let failing = repo_root().join("tests/fixtures/buildpacks/failing");
    let set = mar.mar(&[
        "config:set",
        &format!("BUILDPACK_URL={}", failing.display()),
        "-a",
        "fails",
    ]);
    assert!(set.ok(), "{}", set.all());
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    // A different commit from v1's, so git has something to push.
    repo.write("VERSION", "2\n");
    repo.commit("second");
    let push = repo.push(&mar.git_url("fails"), "main");
    assert_rejected(
        &push,
        &[
            "remote: -----> Failing on purpose",
            "Failing buildpack failed to compile the app (exit status",
        ],
    );
    let r = mar.get("fails.localhost", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn pip_failure_rejects_the_push() {
    let mar = MarServer::start();
    // Offline (see `serving_app`): the package is missing from the wheels the test setup
    // fetched, so this fails the same way with or without a network, and for the reason it
    // names.
    serving_app(&mar, "pipfail").await;
    let repo = mar.repo_from(&fixture("failing-build"));
    let push = repo.push(&mar.git_url("pipfail"), "main");
    assert_rejected(
        &push,
        &[
            "remote: -----> Python app detected",
            "No matching distribution found for mini-mar-this-package-does-not-exist==9.9.9",
            "Python buildpack failed to compile the app (exit status 1); its output above says why",
        ],
    );
    assert!(
        !push.stderr.contains("exit status exit status"),
        "{}",
        push.stderr
    );
    assert_still_serving_the_first_push(&mar, "pipfail").await;
}

#[tokio::test]
async fn web_that_never_binds_or_crashes_fails_the_deploy() {
    let mar = MarServer::start_with(Some("boot_timeout: 2\n"));
    serving_app(&mar, "boot").await;
    let never = mar.repo_from(&fixture("never-binds"));
    let push = never.push(&mar.git_url("boot"), "main");
    assert_rejected(
        &push,
        &[
            "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds of launch",
            "Push rejected; the previous release keeps serving",
        ],
    );
    // R10 is said once, with the app's last lines, not once per layer.
    assert_eq!(
        push.stderr.matches("Error R10").count(),
        1,
        "{}",
        push.stderr
    );
    assert!(
        push.stderr.contains("listening on the wrong port 9")
            && push.stderr.contains("(a mistake the R10 message shows)"),
        "{}",
        push.stderr
    );
    // The app's log says the deploy failed, not the build (which succeeded).
    let log = mar.mar(&["logs", "-a", "boot"]).stdout;
    assert!(
        log.contains("mar[build]: Deploy failed: ") && !log.contains("Build failed"),
        "{log}"
    );
    // Scaled to zero, nothing serves: a rejection says what stays, not that it serves.
    assert!(mar.mar(&["ps:scale", "web=0", "-a", "boot"]).ok());
    let failing = mar.repo_from(&fixture("failing-build"));
    let push = failing.push(&mar.git_url("boot"), "main");
    assert_rejected(&push, &["stays the current release (its processes: idle)"]);
    assert!(!push.stderr.contains("keeps serving"), "{}", push.stderr);
    assert!(mar.mar(&["ps:scale", "web=1", "-a", "boot"]).ok());
    // A first deploy that fails has no previous release to fall back on, and says so.
    mar.create_app("fresh");
    let push = never.push(&mar.git_url("fresh"), "main");
    assert_rejected(
        &push,
        &[
            "Error R10",
            "Push rejected; nothing was deployed (no code of the app has been deployed yet)",
        ],
    );
    assert!(!push.stderr.contains("previous release"), "{}", push.stderr);
    let crash = mar.repo_from(&fixture("crash-at-once"));
    let push = crash.push(&mar.git_url("boot"), "main");
    assert_rejected(
        &push,
        &[
            "process exited during boot: 3",
            "app[web.1]: about to crash",
        ],
    );
    assert_still_serving_the_first_push(&mar, "boot").await;
}

#[tokio::test]
async fn hanging_build_is_killed_and_a_concurrent_push_is_refused() {
    let mar = MarServer::start_with(Some("build_timeout: 8\n"));
    mar.create_app("slow");
    let hanging = repo_root().join("tests/fixtures/buildpacks/hanging");
    assert!(
        mar.mar(&[
            "config:set",
            &format!("BUILDPACK_URL={}", hanging.display()),
            "-a",
            "slow"
        ])
        .ok()
    );
    let repo = mar.repo_from(&fixture("hanging-build"));

    // Start the hanging push and wait until its build is running (its output says so).
    let (mut first, mut stderr, seen) = mar_tests::start_hanging_push(&repo, &mar.git_url("slow"));
    let second = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = second.push(&mar.git_url("slow"), "main");
    assert_rejected(&push, &["another deploy of slow is in progress"]);

    let mut rest = String::new();
    use std::io::Read;
    stderr.read_to_string(&mut rest).unwrap();
    let status = first.wait().unwrap();
    assert!(!status.success());
    assert!(
        rest.contains("build timed out after 8s and was stopped"),
        "{seen}{rest}"
    );
    // The killed buildpack left no process behind: neither itself nor the grandchild it
    // started in a session of its own (the build's cgroup holds both).
    for marker in ["sleep 7772", "sleep 7771"] {
        let left = mar_tests::eventually(std::time::Duration::from_secs(5), || {
            let left = mar_tests::processes_running(marker);
            async move { left.is_empty().then_some(()) }
        });
        left.await;
    }
}

#[tokio::test]
async fn other_branches_and_branch_deletion_are_refused() {
    let mar = MarServer::start();
    serving_app(&mar, "branches").await;
    let repo = mar.repo_from(&repo_root().join("examples/shell-hello"));
    let push = repo.push(&mar.git_url("branches"), "main:feature");
    assert!(!push.ok());
    assert!(
        push.stderr
            .contains("mini-MAR deploys only the main or master branch, not refs/heads/feature"),
        "{}",
        push.stderr
    );
    let push = repo.push(&mar.git_url("branches"), ":main");
    assert!(!push.ok());
    assert!(
        push.stderr
            .contains("Deleting refs/heads/main is not allowed"),
        "{}",
        push.stderr
    );
    // master deploys like main (v3: after the offline config and the first push).
    let push = repo.push(&mar.git_url("branches"), "main:master");
    assert!(push.ok(), "{}", push.all());
    assert!(
        push.stderr.contains("Launching... done, v3"),
        "{}",
        push.stderr
    );
}
