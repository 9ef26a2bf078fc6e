//! Procfile parsing: `TYPE: command` per line, checked strictly so a typo fails the push with
//! its line number instead of silently dropping a process type (piku's "warn and skip" is the
//! anti-pattern).

use std::collections::BTreeMap;

use mar_core::ProcessType;

/// A Procfile that could not be parsed, with the 1-based line it failed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Procfile line {line}: {message}")]
pub struct ProcfileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

/// Parses a Procfile into process type → command, in type order.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, ProcfileError> {
    let mut types: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(ProcfileError {
                line,
                message: format!("expected `TYPE: command`, found {trimmed:?}"),
            });
        };
        let name = name.trim();
        let ty = ProcessType::parse(name).map_err(|e| ProcfileError {
            line,
            message: e.to_string(),
        })?;
        let command = command.trim();
        if command.is_empty() {
            return Err(ProcfileError {
                line,
                message: format!("process type {ty} has no command"),
            });
        }
        if let Some((first, _)) = types.get(ty.as_str()) {
            return Err(ProcfileError {
                line,
                message: format!("process type {ty} is declared twice (first on line {first})"),
            });
        }
        types.insert(ty.as_str().to_owned(), (line, command.to_owned()));
    }
    Ok(types.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_commands() {
        let p = parse(
            "# comment\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\nworker:  python w.py  \n",
        )
        .unwrap();
        assert_eq!(p["web"], "gunicorn app:app --bind 0.0.0.0:$PORT");
        assert_eq!(p["worker"], "python w.py");
    }

    #[test]
    fn colon_inside_command_is_kept() {
        let p = parse("web: echo a:b").unwrap();
        assert_eq!(p["web"], "echo a:b");
    }

    #[test]
    fn errors_name_their_line() {
        let cases = [
            (
                "web: a\nthis line has no colon\n",
                2,
                "expected `TYPE: command`",
            ),
            (
                "web: a\nworker: b\nweb: c\n",
                3,
                "declared twice (first on line 1)",
            ),
            ("Web: a\n", 1, "invalid process type"),
            ("web:\n", 1, "has no command"),
            ("my_type: a\n", 1, "invalid process type"),
        ];
        for (text, line, msg) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}");
            assert!(err.to_string().contains(msg), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("Procfile line {line}: "))
            );
        }
    }
}
