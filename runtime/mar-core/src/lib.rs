//! Domain types shared by every mini-MAR crate: validated names checked once at the boundary.
//!
//! Invariant: this crate does no I/O and knows nothing about HTTP, SQLite or processes.

pub mod name;

pub use name::{
    AppName, Hostname, NameError, ProcessType, RESERVED_NAMES, ReservedName, is_reserved, reserved,
};

/// The stack name reported to buildpacks in `STACK`, like Heroku's `heroku-24`.
pub const STACK: &str = "mar-24";

/// `PATH` for builds and app processes: the system's directories only, the same for both, so
/// that what a build links against (say, the python3 a virtualenv points to) is what the app
/// finds at run time, whatever the operator's own `PATH` holds.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// See [`AppName::platform`].
pub const PLATFORM_NAME: &str = "mar";
