//! One user per app per host, as systemd's `DynamicUser=` does it: each app gets a uid no
//! other app on this host has, whichever `mar serve` (data directory) it belongs to, with a
//! passwd and group entry (`mar-UID`) so that tools which look the user up work. The entry
//! is the uid's claim: it is only removed once nothing runs as the uid, so a uid is never
//! handed to a new app while the old one's processes live.
//!
//! Servers on one host take turns (a `flock` on `/run/lock/mar-users.lock`) to look for a free
//! id and add its entries; `useradd`/`groupadd` also take the shadow suite's own lock, so an
//! id another tool took meanwhile makes the add fail, and the next id is tried. The choice of
//! a candidate is pure (`first_free`); the rest is I/O.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The entry names: `mar-20000`.
const NAME_PREFIX: &str = "mar-";
/// What the GECOS field of an app's entry starts with; the rest names the app and its server.
const GECOS_PREFIX: &str = "mini-MAR app ";
/// How many ids from the base apps may get.
pub const SPAN: u32 = 100_000;

/// The passwd entry name of `uid`.
pub fn user_name(uid: u32) -> String {
    format!("{NAME_PREFIX}{uid}")
}

/// An entry of /etc/passwd: uid, name, GECOS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: u32,
    name: String,
    gecos: String,
}

/// The entries of a passwd or group file (name:x:id:...; GECOS is field 5 of passwd).
fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Entry {
                name: (*f.first()?).to_owned(),
                id: f.get(2)?.parse().ok()?,
                gecos: f.get(4).map_or(String::new(), |g| (*g).to_owned()),
            })
        })
        .collect()
}

/// The GECOS of an app's entry: which app of which data directory holds the uid. `None` when
/// the path cannot be written there (`:`, `,` or a line end in it).
fn gecos(app: &str, data_dir: &Path) -> Option<String> {
    let dir = data_dir.to_str()?;
    (!dir.contains([':', ',', '\n'])).then(|| format!("{GECOS_PREFIX}{app} of {dir}"))
}

/// The data directory an entry's GECOS names, if it is one of ours.
fn owner_dir(gecos: &str) -> Option<PathBuf> {
    let rest = gecos.strip_prefix(GECOS_PREFIX)?;
    let (_, dir) = rest.split_once(" of ")?;
    Some(PathBuf::from(dir))
}

/// The lowest id from `base` that no user, no group and no process has, and that was not
/// `tried` already.
fn first_free(
    base: u32,
    users: &HashSet<u32>,
    groups: &HashSet<u32>,
    busy: &HashSet<u32>,
    tried: &HashSet<u32>,
) -> Option<u32> {
    (base..base.saturating_add(SPAN)).find(|id| {
        !users.contains(id) && !groups.contains(id) && !busy.contains(id) && !tried.contains(id)
    })
}

/// The uids that processes run as now (real or effective).
fn process_uids() -> HashSet<u32> {
    let mut uids = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for e in dir.flatten() {
        if let Some((real, effective)) = process_uid(&e.path()) {
            uids.insert(real);
            uids.insert(effective);
        }
    }
    uids
}

/// A process's real and effective uid, from `/proc/PID/status`.
fn process_uid(proc_dir: &Path) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line["Uid:".len()..].split_whitespace();
    Some((ids.next()?.parse().ok()?, ids.next()?.parse().ok()?))
}

/// Held while the entries are looked at and changed.
fn host_lock() -> io::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Path::new("/run/lock");
    let dir = if dir.is_dir() { dir } else { Path::new("/tmp") };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("mar-users.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e.into())
}

fn read(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Creates the group and user `mar-UID` with id `uid`.
fn add(uid: u32, gecos: &str) -> io::Result<()> {
    let name = user_name(uid);
    run(Command::new("groupadd")
        .args(["--system", "--gid"])
        .arg(uid.to_string())
        .arg(&name))?;
    let user = run(Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--uid",
        ])
        .arg(uid.to_string())
        .arg("--gid")
        .arg(uid.to_string())
        .arg("--comment")
        .arg(gecos)
        .arg(&name));
    if user.is_err() {
        let _ = run(Command::new("groupdel").arg(&name));
    }
    user
}

/// Allocates a uid (and gid, the same) for `app` of the server at `data_dir`, from `base` up.
/// Entries of servers whose data directory is gone, and as which nothing runs, are reclaimed
/// first.
pub fn allocate(app: &str, data_dir: &Path, base: u32) -> io::Result<u32> {
    let gecos = gecos(app, data_dir).ok_or_else(|| {
        io::Error::other(format!(
            "the data directory {} cannot be named in a passwd entry (':' or ',' in it)",
            data_dir.display()
        ))
    })?;
    let _lock = host_lock()?;
    reclaim_orphans();
    let mut tried = HashSet::new();
    for _ in 0..32 {
        let users: HashSet<u32> = entries(&read("/etc/passwd")?)
            .iter()
            .map(|e| e.id)
            .collect();
        let groups: HashSet<u32> = entries(&read("/etc/group")?).iter().map(|e| e.id).collect();
        let Some(uid) = first_free(base, &users, &groups, &process_uids(), &tried) else {
            break;
        };
        // Another server may take the same id between the look and the add: then the add
        // fails and the next id is tried.
        match add(uid, &gecos) {
            Ok(()) => return Ok(uid),
            Err(_) => {
                tried.insert(uid);
            }
        }
    }
    Err(io::Error::other(format!(
        "no free user id from {base} for {app}"
    )))
}

/// Makes sure an app that has `uid` (from before entries were made) holds it with an entry.
/// An entry that names another app or server is an error: two apps would share a user.
pub fn ensure(uid: u32, app: &str, data_dir: &Path) -> io::Result<()> {
    let want = gecos(app, data_dir)
        .ok_or_else(|| io::Error::other("data directory cannot be named in a passwd entry"))?;
    let _lock = host_lock()?;
    match entries(&read("/etc/passwd")?)
        .into_iter()
        .find(|e| e.id == uid)
    {
        Some(e) if e.gecos == want => Ok(()),
        Some(e) => Err(io::Error::other(format!(
            "uid {uid} of app {app} belongs to {} ({}) on this host: two apps must not share a user; destroy and recreate {app}",
            e.name, e.gecos
        ))),
        None => add(uid, &want),
    }
}

/// Kills every process that runs as `uid` (real or effective) and waits until none is left,
/// for at most `patience`. Returns how many it killed, or an error if some survived.
pub fn kill_all(uid: u32, patience: std::time::Duration) -> io::Result<usize> {
    if uid == 0 {
        return Err(io::Error::other("refusing to kill every process of root"));
    }
    let deadline = std::time::Instant::now() + patience;
    let mut killed = 0;
    loop {
        let mut left = 0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                    continue;
                };
                if process_uid(&e.path()).is_some_and(|(r, eff)| r == uid || eff == uid) {
                    left += 1;
                    if nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        killed += 1;
                    }
                }
            }
        }
        if left == 0 {
            return Ok(killed);
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{left} processes of uid {uid} survived SIGKILL"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Gives `uid` back: kills what runs as it, then removes its entries. The entries stay (and
/// so the uid stays taken) when something survived.
pub fn release(uid: u32) -> io::Result<()> {
    kill_all(uid, std::time::Duration::from_secs(5))?;
    let name = user_name(uid);
    let _lock = host_lock()?;
    let owned = entries(&read("/etc/passwd")?)
        .iter()
        .any(|e| e.id == uid && e.name == name);
    if owned {
        run(Command::new("userdel").arg(&name))?;
        let _ = run(Command::new("groupdel").arg(&name));
    }
    Ok(())
}

/// Removes the entries of apps whose server's data directory no longer exists and as which
/// nothing runs (a data directory deleted without destroying its apps).
fn reclaim_orphans() {
    let Ok(text) = read("/etc/passwd") else {
        return;
    };
    let busy = process_uids();
    for e in entries(&text) {
        // Only when the data directory itself is gone (deleted), not when it merely looks
        // empty (an unmounted volume leaves its mount point behind).
        let orphan = e.name == user_name(e.id)
            && owner_dir(&e.gecos)
                .is_some_and(|d| !d.exists() && d.parent().is_some_and(Path::exists))
            && !busy.contains(&e.id);
        if orphan {
            let _ = run(Command::new("userdel").arg(&e.name));
            let _ = run(Command::new("groupdel").arg(&e.name));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn entries_and_owners_parse() {
        let text = "root:x:0:0:root:/root:/bin/bash\nmar-20000:x:20000:20000:mini-MAR app shop of /var/lib/mar:/nonexistent:/usr/sbin/nologin\nbroken\n";
        let e = entries(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].id, 20000);
        assert_eq!(owner_dir(&e[1].gecos), Some(PathBuf::from("/var/lib/mar")));
        assert_eq!(owner_dir(&e[0].gecos), None);
        assert_eq!(
            gecos("shop", Path::new("/var/lib/mar")).as_deref(),
            Some("mini-MAR app shop of /var/lib/mar")
        );
        assert_eq!(gecos("shop", Path::new("/a:b")), None);
    }

    #[test]
    fn the_first_free_id_skips_users_groups_processes_and_tries() {
        let set = |v: &[u32]| v.iter().copied().collect::<HashSet<u32>>();
        let none = HashSet::new();
        assert_eq!(first_free(20000, &none, &none, &none, &none), Some(20000));
        assert_eq!(
            first_free(
                20000,
                &set(&[20000]),
                &set(&[20001]),
                &set(&[20002]),
                &set(&[20003])
            ),
            Some(20004)
        );
    }
}
