//! A minimal `--flag value` command-line parser for the bench binaries, so they need no CLI
//! crate: flags are looked up by name with a default, and unknown flags stop the program.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed `--name value` pairs, `--name` alone meaning `true`, and positional words.
pub struct Args {
    flags: HashMap<String, String>,
    used: std::cell::RefCell<Vec<String>>,
    /// Words that are not flags, in order.
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()` after the program name.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses the given words.
    pub fn parse(words: impl IntoIterator<Item = String>) -> Self {
        let mut flags = HashMap::new();
        let mut positional = Vec::new();
        let mut it = words.into_iter().peekable();
        while let Some(w) = it.next() {
            if let Some(name) = w.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    flags.insert(k.to_owned(), v.to_owned());
                } else if it.peek().is_some_and(|n| !n.starts_with("--")) {
                    flags.insert(name.to_owned(), it.next().unwrap_or_default());
                } else {
                    flags.insert(name.to_owned(), "true".to_owned());
                }
            } else {
                positional.push(w);
            }
        }
        Self {
            flags,
            used: Default::default(),
            positional,
        }
    }

    /// The value of `--name`, parsed, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.used.borrow_mut().push(name.to_owned());
        match self.flags.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: cannot parse {v:?}");
                std::process::exit(64)
            }),
        }
    }

    /// Whether `--name` was given (as `--name` or `--name true`).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name, false)
    }

    /// A comma-separated list, or `default`.
    pub fn list(&self, name: &str, default: &str) -> Vec<String> {
        let v: String = self.get(name, default.to_owned());
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Stops with a usage message if a flag was given that no `get` asked about.
    pub fn finish(&self, usage: &str) {
        if self.flags.contains_key("help") {
            println!("{usage}");
            std::process::exit(0);
        }
        let used = self.used.borrow();
        let unknown: Vec<&String> = self.flags.keys().filter(|k| !used.contains(k)).collect();
        if !unknown.is_empty() {
            eprintln!("unknown flag(s): {unknown:?}\n\n{usage}");
            std::process::exit(64);
        }
    }
}
