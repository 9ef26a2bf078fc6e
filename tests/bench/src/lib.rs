//! Shared machinery of the router benchmarks (`router-http`, `router-ws`) and the push-gateway
//! benchmark (`mws-fanout`): Rust HTTP/1.1, WebSocket and MWS load generators, a latency
//! histogram, `/proc` accounting, the nginx and Node.js reference instances and the mini-MAR
//! subject, and the rounds/medians/table plumbing. The data-store benchmark (`eds-crud`) adds
//! a load generator of distinct requests (`reqload`) and the Parse Server reference
//! (`parse_ref`).
//!
//! Everything here is benchmark code: it panics on setup failures instead of returning errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod args;
pub mod echo;
pub mod hist;
pub mod loadgen;
pub mod mwsload;
pub mod mwsref;
pub mod nginx;
pub mod parse_ref;
pub mod procfs;
pub mod report;
pub mod reqload;
pub mod subject;
pub mod wsload;
