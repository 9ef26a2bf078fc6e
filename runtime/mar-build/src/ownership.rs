//! Handing a tree to an app's user without following anything the app controls. Root does
//! this to trees the app can write to while it runs (its build cache, a build that its
//! running processes can reach, a run directory): an app that swaps a subdirectory for a
//! symlink in the middle of a walk by path (`renameat2(RENAME_EXCHANGE)` in a loop) made root
//! chown whatever the symlink pointed to (the data directory, the admin token, the git hook).
//!
//! So the walk goes by directory handle: each directory is opened relative to its already-open
//! parent with `O_NOFOLLOW | O_DIRECTORY`, each entry is changed with
//! `fchownat(AT_SYMLINK_NOFOLLOW)` relative to that handle, and a directory's own owner changes
//! only after everything below it (so the app cannot enter a tree that is still being walked
//! through a top it newly owns). A swapped-in symlink is changed itself, and never followed;
//! a file with more than one hard link is left alone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, fchown, fchownat};

/// Deepest tree walked; an app's build that nests deeper than this is refused.
const MAX_DEPTH: usize = 256;

/// Gives `root` and everything under it to `uid:gid`; symlinks themselves, never their targets.
/// `root`'s parent must not be writable by the app (its last component is not followed).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let parent = root.parent().unwrap_or(Path::new("/"));
    let Some(name) = root.file_name() else {
        return Err(io::Error::other(format!(
            "{}: no name to chown",
            root.display()
        )));
    };
    let parent = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    chown_entry(&parent, Path::new(name), uid, gid, 0)
}

/// Changes `name` in the open directory `dir`, and what is below it when it is a directory.
fn chown_entry(
    dir: &OwnedFd,
    name: &Path,
    uid: Option<Uid>,
    gid: Option<Gid>,
    depth: usize,
) -> io::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(sub) => {
            if depth >= MAX_DEPTH {
                return Err(io::Error::other("directory tree nested too deeply"));
            }
            for child in entries(&sub)? {
                chown_entry(&sub, Path::new(&child), uid, gid, depth + 1)?;
            }
            // Last: until now the app's user could not enter it (when it did not own it).
            fchown(sub.as_fd(), uid, gid)?;
            Ok(())
        }
        // A symlink (ELOOP), or anything that is not a directory: change it, not its target.
        Err(Errno::ELOOP | Errno::ENOTDIR) => chown_leaf(dir, name, uid, gid),
        // Removed meanwhile: nothing left to give.
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Changes a file or symlink itself, through a handle to it (`O_PATH|O_NOFOLLOW`), and leaves
/// alone a regular file with more than one link: a hard link the app made to a file that is
/// not its own (where `fs.protected_hardlinks` allows it) must not hand that file over.
fn chown_leaf(dir: &OwnedFd, name: &Path, uid: Option<Uid>, gid: Option<Gid>) -> io::Result<()> {
    let leaf = match openat(
        dir.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let stat = nix::sys::stat::fstat(&leaf)?;
    let regular = nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode)
        & nix::sys::stat::SFlag::S_IFMT
        == nix::sys::stat::SFlag::S_IFREG;
    if regular && stat.st_nlink > 1 {
        return Ok(());
    }
    fchownat(leaf.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH)?;
    Ok(())
}

/// The names in an open directory, read through its handle (`/proc/self/fd/N` names the open
/// directory itself, whatever its path has become since).
fn entries(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    let handle = format!("/proc/self/fd/{}", dir.as_raw_fd());
    std::fs::read_dir(handle)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// What the attack tests of this crate share: a root check, and the swap of a directory and a
/// symlink in a loop.
#[cfg(test)]
pub(crate) mod attack {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether this test can chown (as the project's machines and CI can). Without root it
    /// fails, unless `MAR_TESTS_WITHOUT_ROOT=1` says to skip it knowingly: a green run must
    /// not hide an attack test that did not run.
    pub fn as_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            assert!(
                std::env::var_os("MAR_TESTS_WITHOUT_ROOT").is_some(),
                "this test needs root; set MAR_TESTS_WITHOUT_ROOT=1 to skip it knowingly"
            );
            eprintln!("skipped: needs root (MAR_TESTS_WITHOUT_ROOT is set)");
        }
        root
    }

    /// Exchanges `a` and `b` with `renameat2(RENAME_EXCHANGE)` in a loop until dropped.
    pub struct Swapper {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    pub fn swap_in_a_loop(a: PathBuf, b: PathBuf) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &a,
                    nix::fcntl::AT_FDCWD,
                    &b,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                );
            }
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }

    impl Drop for Swapper {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_tree_is_given_away_and_symlinks_are_not_followed() {
        if !super::attack::as_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "root's").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        chown_tree(&tree, 4242, 4243).unwrap();
        for p in ["", "a", "a/b", "a/b/file", "a/link"] {
            let m = std::fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4243), "{p}");
        }
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
        // A hard link to a file outside is left alone (its inode is shared).
        std::fs::hard_link(outside.join("secret"), tree.join("hard")).unwrap();
        chown_tree(&tree, 4242, 4243).unwrap();
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().uid(), 0);
    }

    /// The attack: a subdirectory and a symlink to a root-owned directory swap places with
    /// `renameat2(RENAME_EXCHANGE)` in a tight loop while root walks the tree. A walk by path
    /// chowned the symlink's target within a few hundred walks here.
    #[test]
    fn a_subdirectory_swapped_for_a_symlink_mid_walk_is_never_followed() {
        if !super::attack::as_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        for i in 0..20 {
            std::fs::write(outside.join(format!("secret{i}")), "root's").unwrap();
        }
        let tree = d.path().join("tree");
        let sub = tree.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        for i in 0..20 {
            std::fs::write(sub.join(format!("f{i}")), "x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let swapper = super::attack::swap_in_a_loop(sub.clone(), tree.join("link"));
        for _ in 0..1500 {
            chown_tree(&tree, 4242, 4242).unwrap();
        }
        drop(swapper);
        for i in 0..20 {
            let m = std::fs::metadata(outside.join(format!("secret{i}"))).unwrap();
            assert_eq!(
                m.uid(),
                0,
                "secret{i} was chowned through the swapped symlink"
            );
        }
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
    }
}
