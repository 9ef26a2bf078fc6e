//! The docs run as written: every ```` ```sh ```` block of the README and of `docs/*.md` is
//! executed verbatim, command by command, in one bash session per file, so a doc that stops
//! matching the program fails here rather than in a newcomer's terminal.
//!
//! Conventions a doc follows (see `docs/README.md`):
//! - a command whose line ends in `# → TEXT` must print `TEXT` (stdout or stderr);
//! - a command whose line ends in `# ✗ TEXT` must fail and print `TEXT`;
//! - any other command must exit 0;
//! - a block preceded by `<!-- not run: REASON -->` is skipped (a build, a command that never
//!   ends, a step for another machine);
//! - a file whose blocks never start `mar serve` gets one started for it, on the default
//!   address, before its first block.
//!
//! Each file runs in a sandbox of its own: private network, PID and mount namespaces (so the
//! docs' default port 8080 and paths under `/tmp` are free and private, and nothing outlives
//! the run), a scratch `HOME` and `MAR_HOME`, a working directory laid out as a checkout
//! (`examples/`, and `target/release/mar` being the binary under test), and pip pointed at the
//! wheels the test setup fetched, so builds never reach the network.

use std::path::Path;
use std::time::Duration;

use mar_tests::{OFFLINE_PACKAGES, mar_bin, repo_root, scratch_dir};

/// The longest one file's commands may take together.
const DOC_TIMEOUT: Duration = Duration::from_secs(420);

/// One command of a doc: its text (possibly several lines) and what it promises.
#[derive(Debug, Clone, PartialEq)]
struct DocCommand {
    /// Where it starts, for messages: `docs/x.md:12`.
    origin: String,
    /// The command as written.
    text: String,
    /// Must it fail?
    fails: bool,
    /// Text its output must contain.
    prints: Option<String>,
}

impl DocCommand {
    /// Whether the command runs as a job in the background (`mar serve &`).
    fn in_background(&self) -> bool {
        let last = self.text.lines().last().unwrap_or_default();
        let code = last.split(" # ").next().unwrap_or(last);
        code.trim_end().ends_with('&') && !code.trim_end().ends_with("&&")
    }
}

/// The runnable commands of a Markdown file, in order.
fn commands(file: &str, markdown: &str) -> Vec<DocCommand> {
    let mut out = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    let mut skip_next_block = false;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.trim_start().starts_with("<!-- not run:") {
            skip_next_block = true;
        }
        if let Some(info) = line.trim_start().strip_prefix("```") {
            let runnable = info.trim() == "sh" && !skip_next_block;
            skip_next_block = false;
            i += 1;
            let mut block = Vec::new();
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                block.push((i + 1, lines[i]));
                i += 1;
            }
            if runnable {
                out.extend(split_block(file, &block));
            }
        } else if !line.trim().is_empty() && !line.trim_start().starts_with("<!--") {
            skip_next_block = false;
        }
        i += 1;
    }
    out
}

/// Splits a block into commands: one per line, with `\` continuations and here-documents
/// kept whole; comment-only and blank lines dropped.
fn split_block(file: &str, block: &[(usize, &str)]) -> Vec<DocCommand> {
    let mut out = Vec::new();
    let mut j = 0;
    while j < block.len() {
        let (lineno, first) = block[j];
        j += 1;
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            continue;
        }
        let mut text = first.to_owned();
        let mut last = first;
        while (last.trim_end().ends_with('\\') || inside_quotes(&text)) && j < block.len() {
            last = block[j].1;
            text.push('\n');
            text.push_str(last);
            j += 1;
        }
        // Promises are read from the command's own lines, never from a here-document's body.
        let marker = |m: &str| {
            text.lines()
                .find_map(|l| l.split_once(m).map(|(_, t)| t.trim().to_owned()))
        };
        let (fails, prints) = match (marker("# ✗ "), marker("# → ")) {
            (Some(t), _) => (true, Some(t)),
            (None, t) => (false, t),
        };
        if let Some(word) = heredoc_word(&text) {
            while j < block.len() {
                let body = block[j].1;
                text.push('\n');
                text.push_str(body);
                j += 1;
                if body.trim() == word {
                    break;
                }
            }
        }
        out.push(DocCommand {
            origin: format!("{file}:{lineno}"),
            text,
            fails,
            prints: prints.filter(|t| !t.is_empty()),
        });
    }
    out
}

/// Whether `text` ends inside a quoted string (a script given to `node -e '…'` over several
/// lines, say), as the shell would see it; comments end the scan.
fn inside_quotes(text: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') if previous.is_whitespace() => {
                // A comment runs to the end of its line.
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                previous = '\n';
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (None | Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        previous = c;
    }
    quote.is_some()
}

/// The delimiter of a here-document the command opens (`<<EOF`, `<<'EOF'`, `<<-"EOF"`).
fn heredoc_word(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The bash script that runs `cmds`, marking where each command's output begins and ends and
/// with what status, and stopping at the first command that breaks its promise.
fn script(cmds: &[DocCommand], start_server: bool) -> String {
    let mut s = String::from("exec 2>&1\nexport PATH=\"$PWD/target/release:$PATH\"\n");
    if start_server {
        s.push_str(
            "mar serve >\"$DOC_SERVER_LOG\" 2>&1 &\n\
             for _ in $(seq 300); do [ -f \"$MAR_HOME/serve.json\" ] && break; sleep 0.1; done\n",
        );
    }
    for (n, c) in cmds.iter().enumerate() {
        let broken = if c.fails { "-eq" } else { "-ne" };
        s.push_str(&format!(
            "printf '\\n@@doc-begin {n}\\n'\n{}\ns=$?\nprintf '\\n@@doc-end {n} %s\\n' \"$s\"\n\
             if [ \"$s\" {broken} 0 ]; then exit 3; fi\n",
            c.text
        ));
    }
    // Servers and other jobs the doc started stop gracefully, so they leave nothing behind.
    s.push_str("printf '\\n@@doc-done\\n'\nkill -TERM $(jobs -p) 2>/dev/null\nwait\n");
    s
}

/// The output of command `n` in the transcript, and its status if it finished.
fn section(transcript: &str, n: usize) -> (String, Option<i32>) {
    let begin = format!("@@doc-begin {n}\n");
    let Some(start) = transcript.find(&begin) else {
        return (String::new(), None);
    };
    let rest = &transcript[start + begin.len()..];
    let end_tag = format!("@@doc-end {n} ");
    match rest.find(&end_tag) {
        Some(e) => {
            let status = rest[e + end_tag.len()..]
                .lines()
                .next()
                .and_then(|s| s.trim().parse().ok());
            (rest[..e].to_owned(), status)
        }
        None => (rest.to_owned(), None),
    }
}

/// Runs the `sh` blocks of `rel` (a path under the repository) in a fresh sandbox and panics
/// with the first command that does not do what the doc says.
fn run_doc(rel: &str) {
    let root = repo_root();
    let markdown = std::fs::read_to_string(root.join(rel)).unwrap();
    let cmds = commands(rel, &markdown);
    assert!(!cmds.is_empty(), "{rel} has no runnable block");
    let start_server = !cmds.iter().any(|c| c.text.contains("mar serve"));

    let tmp = scratch_dir();
    let work = tmp.path().join("checkout");
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    let etc_xdg = tmp.path().join("xdg");
    for d in [
        &work.join("target/release"),
        &home,
        &data,
        &etc_xdg.join("pip"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(root.join("examples"), work.join("examples")).unwrap();
    std::os::unix::fs::symlink(root.join("docs"), work.join("docs")).unwrap();
    std::os::unix::fs::symlink(mar_bin(), work.join("target/release/mar")).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[user]\n\tname = Docs Reader\n\temail = reader@example.com\n[init]\n\tdefaultBranch = main\n",
    )
    .unwrap();
    let wheels = Path::new(OFFLINE_PACKAGES).join("wheels");
    assert!(
        wheels.is_dir(),
        "no {}: run `bash scripts/test.sh`, which fetches the examples' packages",
        wheels.display()
    );
    std::fs::write(
        etc_xdg.join("pip/pip.conf"),
        format!(
            "[global]\nno-index = true\nfind-links = {}\n",
            wheels.display()
        ),
    )
    .unwrap();
    let script_path = tmp.path().join("doc.sh");
    std::fs::write(&script_path, script(&cmds, start_server)).unwrap();
    let server_log = tmp.path().join("serve.log");

    // The sandbox: loopback up, pip's site configuration, a private /tmp; then the doc.
    let sandbox = r#"set -e
ip link set lo up
mount --bind "$DOC_PIP_DIR" /etc/xdg
mount -t tmpfs -o mode=1777 tmpfs /tmp
cd "$DOC_WORK"
exec timeout -s KILL "$DOC_TIMEOUT" bash --noprofile --norc "$DOC_SCRIPT""#;
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--",
            "bash",
            "-c",
            sandbox,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("MAR_HOME", &data)
        .env("LANG", "C.UTF-8")
        .env("DOC_PIP_DIR", &etc_xdg)
        .env("DOC_WORK", &work)
        .env("DOC_SCRIPT", &script_path)
        .env("DOC_SERVER_LOG", &server_log)
        .env("DOC_TIMEOUT", DOC_TIMEOUT.as_secs().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let transcript =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let server_log = std::fs::read_to_string(&server_log).unwrap_or_default();
    for (n, c) in cmds.iter().enumerate() {
        let (output, status) = section(&transcript, n);
        let fail = |why: &str| -> ! {
            panic!(
                "{}: {why}\n--- command\n{}\n--- its output\n{output}\n--- the server's log\n{server_log}\n--- the whole run\n{transcript}",
                c.origin, c.text
            )
        };
        match status {
            None => fail("did not finish (the run stopped or timed out here)"),
            Some(0) if c.fails => fail("succeeded, but the doc says it fails"),
            Some(s) if s != 0 && !c.fails => fail(&format!("exited with status {s}")),
            _ => {}
        }
        // What a job started with `&` prints arrives later, in others' sections.
        let printed = if c.in_background() {
            let begin = format!("@@doc-begin {n}\n");
            transcript
                .find(&begin)
                .map_or("", |at| &transcript[at..])
                .to_owned()
        } else {
            output.clone()
        };
        if let Some(want) = &c.prints
            && !printed.contains(want.as_str())
        {
            fail(&format!("did not print {want:?}"));
        }
    }
    // Shown with `--nocapture`: what a reader would have seen.
    println!("{transcript}");
    assert!(
        transcript.contains("@@doc-done"),
        "{rel}: the run did not reach its end\n{transcript}"
    );
}

/// Every doc with commands; `every_doc_is_run` keeps this list and `docs/` in step.
const DOCS: &[&str] = &[
    "README.md",
    "docs/getting-started.md",
    "docs/deploying.md",
    "docs/app-contract.md",
    "docs/wasm.md",
    "docs/router.md",
    "docs/mws.md",
    "docs/eds.md",
    "docs/configuration.md",
    "docs/migrating.md",
    "docs/console.md",
];

#[test]
fn every_doc_is_run() {
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        // docs/cli.md is generated from the CLI and checked against it by `mar`'s own test.
        .filter(|p| p.ends_with(".md") && p != "docs/README.md" && p != "docs/cli.md")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = DOCS
        .iter()
        .filter(|d| d.starts_with("docs/"))
        .map(|d| (*d).to_owned())
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed, "docs/ and the runner's list differ");
}

#[test]
fn the_parser_keeps_continuations_heredocs_and_promises() {
    let md = "text\n```sh\n# a comment\nmar apps:create x   # → Created x\ncurl -s \\\n  http://x/\ncat > f <<'EOF'\na # ✗ not a marker of the cat\nEOF\nmar nope  # ✗ unknown\nnode -e '\n  x # y\n' arg & # it's fine\n```\n\n<!-- not run: builds -->\n```sh\ncargo build\n```\n```yaml\nk: v\n```\n";
    let got = commands("t.md", md);
    let texts: Vec<&str> = got.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "mar apps:create x   # → Created x",
            "curl -s \\\n  http://x/",
            "cat > f <<'EOF'\na # ✗ not a marker of the cat\nEOF",
            "mar nope  # ✗ unknown",
            "node -e '\n  x # y\n' arg & # it's fine",
        ]
    );
    assert_eq!(got[0].prints.as_deref(), Some("Created x"));
    assert!(!got[0].fails && got[3].fails);
    assert_eq!(got[3].origin, "t.md:10");
    assert!(got[4].in_background() && !got[3].in_background());
}

macro_rules! doc_tests {
    ($($name:ident => $path:literal,)*) => {
        $(
            #[test]
            fn $name() {
                run_doc($path);
            }
        )*
        #[test]
        fn the_tests_cover_the_list() {
            let mut tested = vec![$($path),*];
            let mut listed = DOCS.to_vec();
            tested.sort();
            listed.sort();
            assert_eq!(tested, listed);
        }
    };
}

doc_tests! {
    readme => "README.md",
    getting_started => "docs/getting-started.md",
    deploying => "docs/deploying.md",
    app_contract => "docs/app-contract.md",
    wasm => "docs/wasm.md",
    migrating => "docs/migrating.md",
    router => "docs/router.md",
    mws => "docs/mws.md",
    eds => "docs/eds.md",
    configuration => "docs/configuration.md",
    console => "docs/console.md",
}
