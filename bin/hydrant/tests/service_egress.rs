//! The "done when" through the real binary, in `hydrant up`'s default containers: the
//! demo app bound to the micro cloud's own Redis (`create-service redis small cache`,
//! `bind-service demo cache --restart`) counts visits in it, reaching the service node on the
//! bridge through the egress rule its binding opened; a second demo app handed the very same
//! credentials through a user-provided service (which opens no egress) gets no answer.
//! Needs root (containers) and `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/router.rs"]
mod router;

use std::time::Duration;

use cli::{BIN, ok};
use serde_json::Value;

/// Waits (at most 60 s) for a 200 page from `host` whose body contains `needle`.
fn wait_page(router: &str, host: &str, needle: &str) -> String {
    router::wait_page(router, (host, "/"), Duration::from_secs(60), |body| {
        body.contains(needle)
    })
}

#[test]
fn the_bound_demo_app_counts_in_redis_and_the_same_credentials_elsewhere_reach_nothing() {
    let (cloud, router) = router::contained_cloud(BIN);
    let cli = |args: &[&str]| cloud.cli(args);
    let dir = cli::demo_app();
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
