//! Reading a role's own `/metrics` in tests: one scrape, one series summed.
//!
//! Every role serves Prometheus text on its admin listener; tests that assert a counter moved
//! (a drop counted, a lease held, a refusal logged) read it here instead of each keeping its own
//! HTTP GET and line parser. Invariant: an admin listener that is not up yet reads as 0, so a
//! caller polling with [`crate::wait_for`] simply waits for it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::loris::{exchange, fetch, prometheus_value};

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
    match fetch(admin, loopback(admin), "admin", "/metrics").await {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The loopback address of `admin`'s family, to connect from.
fn loopback(admin: SocketAddr) -> IpAddr {
    if admin.is_ipv4() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }
}

/// `GET path` on the admin listener `admin`, with `token` as its bearer credential when given:
/// the status code and the body. HTTP/1.0, so the answer is never chunked whatever it serves.
///
/// # Errors
/// The listener is not up, the answer took longer than 10 s, or it is not HTTP.
pub async fn admin_get(
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: admin\r\n{auth}\r\n");
    exchange(admin, loopback(admin), &request).await
}
