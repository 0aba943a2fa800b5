//! The doppler over real sockets, driven by the stock typed Loggregator v2 clients: what an
//! agent, a traffic controller and a `logs --recent` reader rely on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod support;

mod lifecycle;
mod logcache;
mod loss;
mod routing;
