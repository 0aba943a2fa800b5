//! Reading an app's pages through the micro cloud's router as a browser would: a `hydrant up`
//! whose apps run in containers, the demo app to push, one plain HTTP/1.1 `GET` with a `Host`
//! header on a fresh loopback connection, and polling a page until it says what the test waits
//! for.
//!
//! Included by path (`#[path = "support/router.rs"] mod router;`) by the tests that check what
//! a bound app reaches from inside its container. Invariant: a router that is not there yet or
//! an answer cut short is status 0 (the caller keeps polling), never a panic; every wait has a
//! deadline and fails with the last status and body.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hydrant_testkit::MicroCloud;

/// `hydrant up` (binary `bin`) running apps in its default containers, and its router's URL;
/// fails the test saying why when not root.
pub fn contained_cloud(bin: &str) -> (MicroCloud, String) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
    );
    let cloud = MicroCloud::start(bin, &[]);
    let router = cloud.endpoints()["router"].as_str().unwrap().to_owned();
    (cloud, router)
}

/// `GET path` through `router` for `host`: the status (0 when nothing usable came back) and
/// the body.
pub fn get(router: &str, host: &str, path: &str) -> (u16, String) {
    get_within(Duration::from_secs(15), router, host, path)
}

/// [`get`], for a page that may take up to `timeout` to answer.
pub fn get_within(timeout: Duration, router: &str, host: &str, path: &str) -> (u16, String) {
    let addr = router.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(timeout)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// Waits (at most `within`) for a 200 from `host`'s `path` on which `done` holds; that body.
#[track_caller]
pub fn wait_page(
    router: &str,
    (host, path): (&str, &str),
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(router, host, path);
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} did not get there within {within:?} ({status}):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
