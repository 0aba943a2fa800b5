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

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use hydrant_testkit::MicroCloud;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// offering, plan, instance name, the protocol `/services` names, the Debian package.
const OFFERINGS: [(&str, &str, &str, &str, &str); 3] = [
    ("mysql", "small", "orders", "MySQL", "mariadb-server"),
    ("postgresql", "small", "ledger", "PostgreSQL", "postgresql"),
    ("rabbitmq", "small", "jobs", "AMQP", "rabbitmq-server"),
];

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "command failed: {}", text(out));
    text(out)
}

/// `GET path` through the router for `host`: the status and the body.
fn get(router: &str, host: &str, path: &str) -> (u16, String) {
    let addr = router.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
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

/// Waits (at most `within`) for a 200 `/services` page from `host` on which `done` holds.
fn wait_services(
    router: &str,
    host: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(router, host, "/services");
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{host}/services did not get there within {within:?} ({status}):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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
    assert!(
        nix::unistd::geteuid().is_root(),
        "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
    );
    let cloud = MicroCloud::start(BIN, &[]);
    let cli = |args: &[&str]| cloud.cli(args);
    let router = cloud.endpoints()["router"].as_str().unwrap().to_owned();
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

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
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
