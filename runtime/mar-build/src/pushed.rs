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
    /// Not a directory where one was expected.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// Over the size allowed for it.
    #[error("{0} is larger than {1}")]
    TooLarge(String, String),
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
    let Some(bytes) = read_pushed_bytes(dir, name, MAX_SIZE)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| PushedFileError::NotText(name.to_owned()))
}

/// As [`read_pushed`], for a binary file of at most `max` bytes (a WebAssembly module).
pub fn read_pushed_bytes(
    dir: &Path,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, PushedFileError> {
    let io_err = |source: io::Error| PushedFileError::Io {
        name: name.to_owned(),
        source,
    };
    // Non-blocking: a FIFO named Procfile must not hang the platform.
    let fd = match open_beneath(dir, name, OFlag::O_NOCTTY | OFlag::O_NONBLOCK).map_err(io_err)? {
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
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > max {
        return Err(PushedFileError::TooLarge(
            name.to_owned(),
            crate::human_size(max),
        ));
    }
    Ok(Some(bytes))
}

/// Opens the directory `name` of the tree at `dir` as a handle, on the same terms as
/// [`read_pushed`] (no symlink anywhere, nothing outside the tree), so that whoever uses the
/// handle later sees this directory even if the app swaps the path for a symlink afterwards.
pub fn open_pushed_dir(dir: &Path, name: &str) -> Result<std::os::fd::OwnedFd, PushedFileError> {
    let opened =
        open_beneath(dir, name, OFlag::O_DIRECTORY).map_err(|source| PushedFileError::Io {
            name: name.to_owned(),
            source,
        })?;
    match opened {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP | Errno::EXDEV) => Err(PushedFileError::Symlink(name.to_owned())),
        Err(Errno::ENOTDIR | Errno::ENOENT) => Err(PushedFileError::NotADirectory(name.to_owned())),
        Err(e) => Err(PushedFileError::Io {
            name: name.to_owned(),
            source: e.into(),
        }),
    }
}

/// Opens `name` read-only beneath the tree at `dir` (whose last component is not followed),
/// through no symlink and never out of the tree, with `flags` added. The outer error is the
/// tree's own (it cannot be opened); the inner one is `name`'s, for the caller to classify.
fn open_beneath(
    dir: &Path,
    name: &str,
    flags: OFlag,
) -> io::Result<Result<std::os::fd::OwnedFd, Errno>> {
    let root = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | flags)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    Ok(openat2(&root, name, how))
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
            PushedFileError::TooLarge(..)
        ));
        assert!(open_pushed_dir(&tree, "sub").is_ok());
        assert!(matches!(
            open_pushed_dir(&tree, "up").unwrap_err(),
            PushedFileError::Symlink(_)
        ));
        assert!(matches!(
            open_pushed_dir(&tree, "Procfile").unwrap_err(),
            PushedFileError::NotADirectory(_)
        ));
        assert_eq!(
            read_pushed_bytes(&tree, "big", 1 << 30)
                .unwrap()
                .map(|b| b.len()),
            Some((MAX_SIZE + 1) as usize)
        );
    }
}
