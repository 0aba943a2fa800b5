//! The cloud controller's API end to end on loopback, one test binary (one link) for the API,
//! blob collection, drain, SLO, autoscaling-policy and tenancy suites, which share the harness in
//! `common/support.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod api;
mod autoscaling;
mod blobs;
mod drains;
mod limits;
mod slos;
#[path = "../common/support.rs"]
mod support;
mod tenancy;
