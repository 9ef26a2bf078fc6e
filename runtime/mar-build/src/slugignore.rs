//! `.slugignore`: paths removed from the build directory before buildpacks run, as on Heroku.
//!
//! Patterns are one per line; `#` starts a comment. A pattern with a `/` is anchored at the
//! top of the app; one without matches a file or directory of that name anywhere. `*` and `?`
//! are wildcards within one path component.

use std::path::{Path, PathBuf};

/// Parsed `.slugignore` patterns.
#[derive(Debug, Default)]
pub struct SlugIgnore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl SlugIgnore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let l = l.trim_end_matches('/');
                let anchored = l.contains('/');
                let parts = l
                    .trim_start_matches('/')
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                (anchored, parts)
            })
            .collect();
        Self { patterns }
    }

    /// Whether `rel` (a path relative to the app's top, components separated by `/`) is ignored.
    pub fn matches(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        self.patterns.iter().any(|(anchored, parts)| {
            if *anchored {
                comps.len() == parts.len() && comps.iter().zip(parts).all(|(c, p)| glob(p, c))
            } else {
                parts.len() == 1 && comps.last().is_some_and(|c| glob(&parts[0], c))
            }
        })
    }

    /// Removes every matching path under `root`, returning what was removed (relative paths).
    pub fn apply(&self, root: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        if self.patterns.is_empty() {
            return Ok(removed);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in std::fs::read_dir(root.join(&rel))? {
                let entry = entry?;
                let child = rel.join(entry.file_name());
                let ty = entry.file_type()?;
                if self.matches(&child.to_string_lossy()) {
                    if ty.is_dir() {
                        std::fs::remove_dir_all(entry.path())?;
                    } else {
                        std::fs::remove_file(entry.path())?;
                    }
                    removed.push(child);
                } else if ty.is_dir() {
                    stack.push(child);
                }
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// Matches one path component against a pattern with `*` and `?`.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let s = SlugIgnore::parse("# docs\n*.psd\n/docs\ntest/fixtures\n");
        assert!(s.matches("art.psd"));
        assert!(s.matches("a/b/art.psd"));
        assert!(s.matches("docs"));
        assert!(!s.matches("src/docs"));
        assert!(s.matches("test/fixtures"));
        assert!(!s.matches("app.py"));
    }

    #[test]
    fn apply_removes_matches() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("docs/x")).unwrap();
        std::fs::write(d.path().join("docs/x/a.txt"), "a").unwrap();
        std::fs::write(d.path().join("keep.txt"), "a").unwrap();
        std::fs::write(d.path().join("big.psd"), "a").unwrap();
        let removed = SlugIgnore::parse("docs\n*.psd").apply(d.path()).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(d.path().join("keep.txt").exists());
        assert!(!d.path().join("docs").exists());
    }
}
