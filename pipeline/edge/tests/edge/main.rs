//! The traffic controller over real sockets: a fake doppler feeds `run()`, WebSocket, SSE and
//! HTTP clients read from it, and the role's own `/metrics` are checked against what the
//! clients saw (the ledger).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness helpers outside #[test] fns"
)]

mod admission;
mod auth;
mod firehose;
mod harness;
mod limits;
mod recent;
mod resilience;
mod resume;
mod shard;
mod slow;
mod sse;
mod tls;
