//! `AppName` and `ProcessType`: DNS labels, validated once so the rest of the code can trust them;
//! and the app names the platform keeps for itself (`RESERVED_NAMES`).
//!
//! App names become host names (`APP.localhost`), directory names and git URLs, so this check
//! is the security boundary against path traversal and header injection.

use std::fmt;

/// Why a name was refused; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// An app name that is not a DNS label of the allowed shape.
    #[error(
        "invalid app name {0:?}: use 1 to 30 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    App(String),
    /// A custom domain that is not a host name.
    #[error(
        "invalid domain {0:?}: use a host name like www.example.com (lowercase labels of letters, digits and '-', separated by dots)"
    )]
    Hostname(String),
    /// A process type that is not a DNS label.
    #[error(
        "invalid process type {0:?}: use 1 to 30 lowercase letters, digits and '-', starting with a letter"
    )]
    ProcessType(String),
}

/// Longest app name: short enough that `APP.DOMAIN` stays well under DNS limits.
const MAX_LEN: usize = 30;

fn is_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// An app name the platform keeps for itself, and what it serves there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedName {
    /// The label.
    pub name: &'static str,
    /// What `NAME.DOMAIN` serves, as the end of a sentence.
    pub serves: &'static str,
}

impl ReservedName {
    /// What the platform does with `NAME.domain`: "`api.example.com` serves the platform's API".
    pub fn reason(&self, domain: &str) -> String {
        format!("`{}.{domain}` {}", self.name, self.serves)
    }

    /// Why a new app cannot take this name, for a platform serving `domain`.
    pub fn refusal(&self, domain: &str) -> String {
        format!(
            "the name `{}` is reserved: {}; choose another name",
            self.name,
            self.reason(domain)
        )
    }
}

/// App names no new app may take: every label the platform serves, or will serve, under its
/// own domain. An app is reached at `NAME.DOMAIN`, so an app with one of these names would be
/// shadowed by the platform (`api.DOMAIN` is the API today) or would shadow a platform service
/// once it arrives. The router's platform-host check and `apps:create` both read this list.
pub const RESERVED_NAMES: &[ReservedName] = &[
    ReservedName {
        name: "api",
        serves: "serves the platform's API",
    },
    ReservedName {
        name: "mws",
        serves: "is kept for the platform's push gateway (MWS)",
    },
    ReservedName {
        name: "eds",
        serves: "is kept for the platform's data store (EDS)",
    },
    ReservedName {
        name: "www",
        serves: "is kept for the platform's own web site",
    },
    ReservedName {
        name: "mar",
        serves: "is kept for the platform itself",
    },
];

/// The reserved name `name` is, if it is one (names are compared as given: app names are
/// lowercase, host labels must be lowercased first).
pub fn reserved(name: &str) -> Option<&'static ReservedName> {
    RESERVED_NAMES.iter().find(|r| r.name == name)
}

/// Whether no new app may be called `name` (see `RESERVED_NAMES`).
pub fn is_reserved(name: &str) -> bool {
    reserved(name).is_some()
}

/// A validated app name: a DNS label of at most 30 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    /// Validates `s` as an app name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if is_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::App(s.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for AppName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated Procfile process type (`web`, `worker`, `release`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessType(String);

impl ProcessType {
    /// Validates `s` as a process type.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if is_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::ProcessType(s.to_owned()))
        }
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the `web` type, the only one that receives traffic.
    pub fn is_web(&self) -> bool {
        self.0 == "web"
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated custom domain: a lowercase DNS host name with at least two labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Validates `s` (case-insensitive) as a host name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        let ok = lower.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && b.len() <= 63
                    && b[0] != b'-'
                    && b[b.len() - 1] != b'-'
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            })
            && !labels.iter().all(|l| l.bytes().all(|c| c.is_ascii_digit()));
        if ok {
            Ok(Self(lower))
        } else {
            Err(NameError::Hostname(s.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AppName {
    /// The name the platform's own requests are logged and counted under: its access log is
    /// `logs/mar.log`, its metrics carry `app="mar"`. The name is reserved, so no app has it.
    pub fn platform() -> Self {
        AppName(crate::PLATFORM_NAME.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "echo", "my-app-2", "a23456789012345678901234567890"] {
            assert!(AppName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn reserved_names_are_valid_labels_and_say_why() {
        for r in RESERVED_NAMES {
            // Still valid names, so an app that took one before the rule can be destroyed.
            assert!(AppName::parse(r.name).is_ok(), "{}", r.name);
            assert!(is_reserved(r.name));
            let why = r.refusal("example.com");
            assert!(why.contains(&format!("`{}.example.com`", r.name)), "{why}");
            assert!(why.ends_with("choose another name"), "{why}");
        }
        assert_eq!(
            reserved("api").unwrap().refusal("localhost"),
            "the name `api` is reserved: `api.localhost` serves the platform's API; choose another name"
        );
        for name in ["mws", "eds", "www", "mar"] {
            assert!(is_reserved(name), "{name}");
        }
        for free in ["apis", "myapi", "web", "app", "API", ""] {
            assert!(!is_reserved(free), "{free}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(
            Hostname::parse("WWW.Example.com.").unwrap().as_str(),
            "www.example.com"
        );
        for bad in [
            "example",
            "127.0.0.1",
            "a..b",
            "-a.com",
            "a_b.com",
            "a b.com",
            "../x.com",
            "",
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "Echo",
            "1app",
            "-app",
            "app-",
            "a_b",
            "a.b",
            "..",
            "a/b",
            "a b",
            "a234567890123456789012345678901",
            "é",
        ] {
            let err = AppName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("lowercase letters"), "{bad}");
        }
    }
}
