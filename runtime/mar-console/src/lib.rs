//! The web console's server side: its pages (embedded in the binary, served with a strict
//! Content-Security-Policy), its sign-in sessions (an HttpOnly, SameSite=Strict cookie with a
//! CSRF token for every change), and the limit on failed sign-ins per address.
//!
//! Boundary: this crate knows nothing of apps, services or the API it fronts. The console's
//! pages are a client of the platform API like the CLI; the runtime routes `/` and `/console/…`
//! here and asks [`Sessions::authorize`] whether a request without the admin token carries a
//! session that may make it.
#![deny(missing_docs)]

mod assets;
mod sessions;
mod sign_in_limit;

pub use assets::{Asset, CONTENT_SECURITY_POLICY, asset, security_headers};
pub use sessions::{COOKIE, CSRF_HEADER, Refusal, SessionView, Sessions};
pub use sign_in_limit::{MAX_FAILURES, SignInLimit, WINDOW};
