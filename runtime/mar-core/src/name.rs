//! `AppName` and `ProcessType`: DNS labels, validated once so the rest of the code can trust them.
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
