//! Shared machinery of the router benchmarks (`router-http`, `router-ws`): a Rust HTTP/1.1
//! and WebSocket load generator, a latency histogram, `/proc` accounting, the nginx reference
//! instances and the mini-MAR subject, and the rounds/medians/table plumbing.
//!
//! Everything here is benchmark code: it panics on setup failures instead of returning errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod args;
pub mod echo;
pub mod hist;
pub mod loadgen;
pub mod nginx;
pub mod procfs;
pub mod report;
pub mod subject;
pub mod wsload;
