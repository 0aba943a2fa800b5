//! Every offering of the micro cloud's own broker reached from inside an app's container,
//! through the real binary in `hydrant up`'s default containers: MySQL (MariaDB), PostgreSQL
//! and RabbitMQ instances bound to the demo app answer its `/services` knock with their own
//! protocol's greeting (MySQL's server handshake, PostgreSQL's answer to an SSL request,
//! AMQP's `Connection.Start`), through the egress rules their bindings opened; a second demo
//! app handed the very same credentials as user-provided services (which open no egress)
//! reaches none of them. (Redis has its own test, `service_egress.rs`.)
//!
//! Needs root (containers). An offering whose server is not installed is absent from the
//! marketplace; it is skipped with a message naming its Debian package (CI installs them all
//! through `scripts/test`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/router.rs"]
mod router;

use std::process::Stdio;
use std::time::Duration;

use cli::{BIN, ok};
use serde_json::Value;

/// offering, plan, instance name, the protocol `/services` names, the Debian package.
const OFFERINGS: [(&str, &str, &str, &str, &str); 3] = [
    ("mysql", "small", "orders", "MySQL", "mariadb-server"),
    ("postgresql", "small", "ledger", "PostgreSQL", "postgresql"),
    ("rabbitmq", "small", "jobs", "AMQP", "rabbitmq-server"),
];

/// Waits (at most `within`) for a 200 `/services` page from `host` on which `done` holds.
fn wait_services(
    router: &str,
    host: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    router::wait_page(router, (host, "/services"), within, done)
}

/// The `/services` line of instance `name`.
fn line_of<'a>(page: &'a str, name: &str) -> &'a str {
    let quoted = format!("service \"{name}\"");
    page.lines()
        .find(|l| l.contains(&quoted))
        .unwrap_or_else(|| panic!("no line for {name}:\n{page}"))
}

#[test]
fn each_offering_is_reached_from_inside_a_bound_app_and_from_no_other() {
    let (cloud, router) = router::contained_cloud(BIN);
    let cli = |args: &[&str]| cloud.cli(args);
    let out = cli(&["marketplace", "--json"]);
    ok(&out);
    let market: Value = serde_json::from_slice(&out.stdout).unwrap();
    let offered: Vec<&str> = market
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    let mut wanted = Vec::new();
    for (offering, plan, name, protocol, package) in OFFERINGS {
        if offered.contains(&offering) {
            wanted.push((offering, plan, name, protocol));
        } else {
            eprintln!(
                "SKIPPED {offering}: its server is not installed, so the broker does not offer \
                 it; install the Debian package {package} (scripts/test does)"
            );
        }
    }
    assert!(
        !wanted.is_empty(),
        "none of mysql, postgresql, rabbitmq is offered: install mariadb-server, postgresql and \
         rabbitmq-server (scripts/test does)"
    );

    let dir = cli::demo_app();
    let app = dir.path().to_str().unwrap();
    // The instances provision side by side while the apps stage.
    let creating: Vec<_> = wanted
        .iter()
        .map(|(offering, plan, name, _)| {
            cloud
                .command(&["create-service", offering, plan, name, "--wait"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    ok(&cli(&["push", "demo", "-p", app]));
    ok(&cli(&["push", "other", "-p", app]));
    for created in creating {
        ok(&created.wait_with_output().unwrap());
    }
    for (i, (_, _, name, _)) in wanted.iter().enumerate() {
        let mut args = vec!["bind-service", "demo", name];
        if i + 1 == wanted.len() {
            args.push("--restart");
        }
        ok(&cli(&args));
    }
    let reached = wait_services(
        &router,
        "demo.apps.localhost",
        Duration::from_secs(90),
        |p| {
            wanted
                .iter()
                .all(|(_, _, name, _)| p.lines().any(|l| l.contains(name) && l.contains("reached")))
        },
    );
    eprintln!("the bound app's /services:\n{reached}");
    for (_, _, name, protocol) in &wanted {
        let line = line_of(&reached, name);
        assert!(
            line.starts_with(&format!("{protocol} service")) && line.contains(": reached: "),
            "{line}"
        );
    }
    let line = |name| line_of(&reached, name).to_owned();
    if wanted.iter().any(|w| w.0 == "mysql") {
        assert!(
            line("orders").contains("MySQL protocol 10"),
            "{}",
            line("orders")
        );
    }
    if wanted.iter().any(|w| w.0 == "rabbitmq") {
        assert!(
            line("jobs").contains("Connection.Start"),
            "{}",
            line("jobs")
        );
    }

    // The same credentials, handed to another app as user-provided services: no egress.
    for (_, _, name, _) in &wanted {
        ok(&cli(&["create-service-key", name, "k", "--wait"]));
        let out = cli(&["service-key", name, "k"]);
        ok(&out);
        let key: Value = serde_json::from_slice(&out.stdout).unwrap();
        let stolen = format!("stolen-{name}");
        ok(&cli(&[
            "create-user-provided-service",
            &stolen,
            "-p",
            &key.to_string(),
        ]));
        ok(&cli(&["bind-service", "other", &stolen]));
    }
    ok(&cli(&["restart", "other"]));
    let refused = wait_services(
        &router,
        "other.apps.localhost",
        Duration::from_secs(90),
        |p| {
            wanted
                .iter()
                .all(|(_, _, name, _)| p.contains(&format!("service \"stolen-{name}\"")))
        },
    );
    eprintln!("the other app's /services:\n{refused}");
    for (_, _, name, _) in &wanted {
        let line = line_of(&refused, &format!("stolen-{name}"));
        assert!(
            !line.contains("reached")
                && (line.contains("no answer within 2 s") || line.contains("cannot connect")),
            "an unbound app reaches {name}: {line}"
        );
    }
    // And the bound app still reaches every one.
    wait_services(
        &router,
        "demo.apps.localhost",
        Duration::from_secs(30),
        |p| p.lines().filter(|l| l.contains("reached")).count() == wanted.len(),
    );
}
