//! The "done when" through the real binary, in `hydrant up`'s default containers: the
//! demo app bound to the micro cloud's own Redis (`create-service redis small cache`,
//! `bind-service demo cache --restart`) counts visits in it, reaching the service node on the
//! bridge through the egress rule its binding opened; a second demo app handed the very same
//! credentials through a user-provided service (which opens no egress) gets no answer.
//! Needs root (containers) and `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cli::ok;
use hydrant_testkit::MicroCloud;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// `GET /` through the router for `host`: the status and the body.
fn page(router: &str, host: &str) -> (u16, String) {
    let addr = router.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
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

/// Waits (at most 60 s) for a 200 page from `host` whose body contains `needle`.
fn wait_page(router: &str, host: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = page(router, host);
        if status == 200 && body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} from {host} ({status}):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_bound_demo_app_counts_in_redis_and_the_same_credentials_elsewhere_reach_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
    );
    let cloud = MicroCloud::start(BIN, &[]);
    let cli = |args: &[&str]| cloud.cli(args);
    let router = cloud.endpoints()["router"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    let app = dir.path().to_str().unwrap();

    ok(&cli(&[
        "create-service",
        "redis",
        "small",
        "cache",
        "--wait",
    ]));
    ok(&cli(&["push", "demo", "-p", app]));
    ok(&cli(&["push", "other", "-p", app]));
    ok(&cli(&["bind-service", "demo", "cache", "--restart"]));
    let first = wait_page(&router, "demo.apps.localhost", "visits counted in Redis");
    assert!(
        first.contains("visits counted in Redis service \"cache\""),
        "{first}"
    );
    let second = wait_page(&router, "demo.apps.localhost", "visits counted in Redis");
    assert_ne!(first, second, "the counter moves");

    // The same credentials, handed to another app as a user-provided service.
    ok(&cli(&["create-service-key", "cache", "k", "--wait"]));
    let out = cli(&["service-key", "cache", "k"]);
    ok(&out);
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        key["uri"].as_str().unwrap().starts_with("redis://"),
        "{key}"
    );
    ok(&cli(&[
        "create-user-provided-service",
        "stolen",
        "-p",
        &key.to_string(),
    ]));
    ok(&cli(&["bind-service", "other", "stolen", "--restart"]));
    let refused = wait_page(&router, "other.apps.localhost", "Redis service \"stolen\"");
    assert!(
        refused.contains("Redis service \"stolen\": no answer within 2 s"),
        "{refused}"
    );
    // And the bound app still counts.
    wait_page(&router, "demo.apps.localhost", "visits counted in Redis");
}
