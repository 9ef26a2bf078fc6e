//! The CLI reference (`docs/cli.md`), rendered from the clap definitions themselves so that it
//! cannot drift from the program: a test compares the file with what this renders, and
//! `MAR_BLESS=1 cargo test -p mar cli_reference` rewrites it.

use clap::{Arg, Command};

/// The whole reference as Markdown.
pub(crate) fn render(mut cli: Command) -> String {
    cli.build();
    let mut out = String::from(
        "# CLI reference\n\n\
         <!-- Generated from the CLI's definitions by runtime/mar/src/cli_reference.rs: edit the \
         doc comments there, then run `MAR_BLESS=1 cargo test -p mar cli_reference`. -->\n\n",
    );
    if let Some(about) = cli.get_about() {
        out.push_str(&format!("{about}\n\n"));
    }
    out.push_str(
        "Every command below is `mar COMMAND`; `mar help COMMAND` prints the same text. The \
         options every command takes:\n\n",
    );
    let globals: Vec<&Arg> = cli
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set())
        .collect();
    options_table(&mut out, &globals);
    out.push_str("\n## Commands\n\n| command | what it does |\n|---|---|\n");
    let commands: Vec<&Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    for c in &commands {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "| [`{0}`](#mar-{1}) | {2} |\n",
            c.get_name(),
            anchor(c.get_name()),
            cell(&about)
        ));
    }
    for c in commands {
        out.push_str(&format!("\n## mar {}\n\n", c.get_name()));
        let about = c
            .get_long_about()
            .or_else(|| c.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        if !about.is_empty() {
            out.push_str(&format!("{about}\n\n"));
        }
        let usage = c.clone().render_usage().to_string();
        out.push_str(&format!("```text\n{}\n```\n", usage.trim_end()));
        let args: Vec<&Arg> = c
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set() && a.get_id() != "help")
            .collect();
        if !args.is_empty() {
            out.push('\n');
            options_table(&mut out, &args);
        }
    }
    out
}

/// A table of arguments: how each is written, its environment variable, what it means.
fn options_table(out: &mut String, args: &[&Arg]) {
    out.push_str("| argument | environment | meaning |\n|---|---|---|\n");
    for a in args {
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let help = a
            .get_long_help()
            .or_else(|| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let mut meaning = cell(&help);
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !meaning.is_empty() && !meaning.ends_with(['.', ')', ':']) {
            meaning.push('.');
        }
        if !defaults.is_empty() && a.get_action().takes_values() {
            meaning.push_str(&format!(" Default: `{}`.", defaults.join(" ")));
        }
        let values: Vec<String> = a
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && a.get_action().takes_values() {
            meaning.push_str(&format!(" One of {}.", values.join(", ")));
        }
        out.push_str(&format!("| `{}` | {env} | {meaning} |\n", spelling(a)));
    }
}

/// How an argument is written on the command line: `-a, --app <APP>`, `<NAME>`, `[CMD]...`.
fn spelling(a: &Arg) -> String {
    let value = a
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", a.get_id().as_str().to_uppercase()));
    let many = matches!(a.get_num_args(), Some(r) if r.max_values() > 1);
    let value = if many { format!("{value}...") } else { value };
    if a.is_positional() {
        return if a.is_required_set() {
            value
        } else {
            format!("[{value}]")
        };
    }
    let mut names = Vec::new();
    if let Some(s) = a.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = a.get_long() {
        names.push(format!("--{l}"));
    }
    let mut text = names.join(", ");
    if a.get_action().takes_values() {
        text.push(' ');
        text.push_str(&value);
    }
    text
}

/// Text fit for one table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// GitHub's anchor for the heading `mar NAME`.
fn anchor(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect::<String>()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    #[test]
    fn cli_reference_is_current() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let fresh = super::render(<crate::cli::Cli as clap::CommandFactory>::command());
        if std::env::var_os("MAR_BLESS").is_some() {
            std::fs::write(&doc, &fresh).unwrap();
        }
        let on_disk = std::fs::read_to_string(&doc).unwrap_or_default();
        assert!(
            on_disk == fresh,
            "docs/cli.md is out of date with the CLI: run `MAR_BLESS=1 cargo test -p mar cli_reference` and commit it"
        );
    }

    #[test]
    fn every_command_and_option_is_in_the_reference() {
        let fresh = super::render(<crate::cli::Cli as clap::CommandFactory>::command());
        for needle in [
            "## mar serve",
            "`--listen <LISTEN>` | `MAR_LISTEN`",
            "## mar services:attach",
            "`-a, --app <APP>`",
            "## mar logs",
        ] {
            assert!(fresh.contains(needle), "{needle} missing from\n{fresh}");
        }
        assert!(!fresh.contains("## mar hook"), "hidden commands stay out");
    }
}
