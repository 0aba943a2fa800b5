//! Test support shared by every crate whose tests stand in for a Loggregator v2 agent: a
//! [`FakeAgent`] that records the envelopes a role sends it, [`wait_for`], which polls a
//! condition until it holds or a deadline passes, [`MicroCloud`], a real `hydrant up` for
//! end-to-end tests of the binary, [`envelopes`], builders for the envelopes tests feed, and
//! [`SlowLoris`] with [`probe`], for the abuse-limit tests of every public listener.
//!
//! A dev-dependency only; no role links it. Its invariant is the house rule for tests: nothing
//! sleeps and hopes. Every wait names what it waited for and fails the test once its deadline
//! passes, and every fixture binds an ephemeral loopback port.

#![allow(
    clippy::expect_used,
    reason = "test support: a fixture that cannot start must fail the test that asked for it"
)]

mod agent;
pub mod envelopes;
mod loris;
mod metrics;
mod micro;
mod wait;

pub use agent::{FakeAgent, FakeAgentBuilder, Received};
pub use loris::{LorisCounts, SlowLoris, fetch, p99, probe, prometheus_value};
pub use metrics::{admin_get, scrape, scrape_metric};
pub use micro::MicroCloud;
pub use wait::{Condition, dead_addr, wait_for};
