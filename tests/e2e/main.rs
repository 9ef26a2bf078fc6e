//! The end-to-end suite: one test binary that drives the real `mar` binary, the real `git`
//! client, real app processes, and real HTTP and WebSocket clients on 127.0.0.1.
//!
//! Tests that need a language toolchain (Python venv, Node/npm, Qt) fail with a message naming
//! the package when it is missing; the README's test command installs them all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod buildpacks;
mod claims;
mod console;
mod demos;
mod deploy;
mod docs;
mod eds;
mod failures;
mod formation;
mod hardening;
mod isolation;
mod lifecycle;
mod mws;
mod platform;
mod releases;
mod router;
mod sdk;
mod tidy;
mod uploads;
mod wasm;
mod websocket;
