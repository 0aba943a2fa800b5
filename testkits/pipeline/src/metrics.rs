//! Reading a role's own `/metrics` in tests: one scrape, one series summed.
//!
//! Every role serves Prometheus text on its admin listener; tests that assert a counter moved
//! (a drop counted, a lease held, a refusal logged) read it here instead of each keeping its own
//! HTTP GET and line parser. Invariant: an admin listener that is not up yet reads as 0, so a
//! caller polling with [`crate::wait_for`] simply waits for it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::loris::{fetch, prometheus_value};

/// The sum of the series `name` whose labels include every `labels` pair, from the `/metrics`
/// of the role whose admin listener is `admin`; 0 when the series is absent or the listener
/// does not answer.
pub async fn scrape_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(admin)
        .await
        .map_or(0.0, |text| prometheus_value(&text, name, labels))
}

/// The `/metrics` text of the role whose admin listener is `admin`, or `None` when it does not
/// answer 200.
pub async fn scrape(admin: SocketAddr) -> Option<String> {
    let from = if admin.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    };
    match fetch(admin, from, "admin", "/metrics").await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}
