//! Reading the files of a pushed tree that the platform itself reads as root (`Procfile`,
//! `.buildpacks`, `.slugignore`, `app.json`): never through a symlink, never outside the tree,
//! never anything but a regular file of a bounded size. A `Procfile` pushed as a symlink to a
//! root-only file once put that file's content in the logs and error messages; now it is
//! refused, and no error ever quotes a file that is not what it claims to be.

use std::io::{self, Read};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Largest file of this kind that is read.
const MAX_SIZE: u64 = 1 << 20;

/// Why a pushed file was not read; the messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum PushedFileError {
    /// A symlink (or a path through one, or out of the tree).
    #[error("{0} is a symbolic link (or leads out of the app): push the file itself")]
    Symlink(String),
    /// A directory, a FIFO, a device...
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// Over [`MAX_SIZE`].
    #[error("{0} is larger than 1 MiB")]
    TooLarge(String),
    /// Not UTF-8 text.
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    /// Reading failed.
    #[error("cannot read {name}: {source}")]
    Io {
        /// The file.
        name: String,
        /// The cause.
        source: io::Error,
    },
}

/// Reads `name` (a path relative to `dir`, without `..`) from the pushed tree at `dir`;
/// `None` when there is no such file. `dir`'s own parents must not be writable by the app:
/// its last component is not followed, and nothing below it is.
pub fn read_pushed(dir: &Path, name: &str) -> Result<Option<String>, PushedFileError> {
    let io_err = |source: io::Error| PushedFileError::Io {
        name: name.to_owned(),
        source,
    };
    let root = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    // Non-blocking: a FIFO named Procfile must not hang the platform.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = match openat2(&root, name, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP | Errno::EXDEV) => return Err(PushedFileError::Symlink(name.to_owned())),
        Err(e) => return Err(io_err(e.into())),
    };
    let stat = fstat(&fd).map_err(|e| io_err(e.into()))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(PushedFileError::NotAFile(name.to_owned()));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(PushedFileError::TooLarge(name.to_owned()));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| PushedFileError::NotText(name.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_regular_files_inside_the_tree_are_read() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(d.path().join("secret"), "root's secret").unwrap();
        std::fs::write(tree.join("Procfile"), "web: run\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink("Procfile", tree.join("inside-link")).unwrap();
        std::os::unix::fs::symlink(d.path(), tree.join("up")).unwrap();
        nix::unistd::mkfifo(&tree.join("fifo"), Mode::S_IRWXU).unwrap();

        assert_eq!(
            read_pushed(&tree, "Procfile").unwrap().as_deref(),
            Some("web: run\n")
        );
        assert!(read_pushed(&tree, "missing").unwrap().is_none());
        for name in ["link", "inside-link", "up/secret", "../secret"] {
            let e = read_pushed(&tree, name).unwrap_err();
            assert!(matches!(e, PushedFileError::Symlink(_)), "{name}: {e}");
            assert!(!e.to_string().contains("root's secret"));
        }
        assert!(matches!(
            read_pushed(&tree, "fifo").unwrap_err(),
            PushedFileError::NotAFile(_)
        ));
        assert!(matches!(
            read_pushed(&tree, "sub").unwrap_err(),
            PushedFileError::NotAFile(_)
        ));
        std::fs::write(tree.join("big"), vec![b'a'; (MAX_SIZE + 1) as usize]).unwrap();
        assert!(matches!(
            read_pushed(&tree, "big").unwrap_err(),
            PushedFileError::TooLarge(_)
        ));
    }
}
