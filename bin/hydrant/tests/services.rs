//! The service commands through the real `hydrant` binary against a real `hydrant up`, with a
//! small OSBAPI broker of the test's own on loopback: register it, enable access, browse the
//! marketplace, create, bind (with a rolling restart that hands the app its new
//! `VCAP_SERVICES`), make and read service keys, user-provided services with a syslog drain,
//! plan changes, unbind and delete — every list also as `--json`.
//!
//! The broker here is deliberately simple (synchronous answers); the cloud controller's own
//! tests hold the strict one that checks every header and field the spec requires.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cli::{json as json_of, ok, text};
use hydrant_testkit::MicroCloud;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

/// A synchronous OSBAPI broker on a loopback port, one thread per connection.
fn start_broker() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    url
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (status, answer) = route(method, path);
    let text = answer.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
}

fn route(method: &str, path: &str) -> (u16, Value) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["v2", "catalog"]) => (
            200,
            json!({"services": [{
                "id": "svc-kv", "name": "kv", "description": "a key-value store",
                "bindable": true, "plan_updateable": true, "tags": ["kv", "cache"],
                "plans": [
                    {"id": "kv-small", "name": "small", "description": "a small one"},
                    {"id": "kv-large", "name": "large", "description": "a large one",
                     "free": false}
                ]
            }]}),
        ),
        ("PUT", ["v2", "service_instances", _]) => (201, json!({})),
        ("PATCH", ["v2", "service_instances", _]) => (200, json!({})),
        ("PUT", ["v2", "service_instances", _, "service_bindings", binding]) => (
            201,
            json!({"credentials": {
                "uri": format!("redis://:pw-{binding}@127.0.0.1:6379"),
                "password": format!("pw-{binding}")
            }}),
        ),
        ("DELETE", _) => (200, json!({})),
        _ => (404, json!({"description": "no such route"})),
    }
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v["name"] == name)
}

#[test]
fn the_service_commands_work_in_cloud_foundrys_shape() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
    );
    let cloud = MicroCloud::start(BIN, &[]);
    let broker = start_broker();
    let cli = |args: &[&str]| cloud.cli(args);

    // `hydrant up` registered its own broker and wrote it to endpoints.json.
    let endpoints = cloud.endpoints();
    assert!(
        endpoints["service_broker"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{endpoints}"
    );
    assert_eq!(endpoints["service_broker"]["username"], "broker");

    // Brokers and access (admin).
    let out = ok(&cli(&["create-service-broker", "fake", "u", "p", &broker]));
    assert!(out.contains("kv"), "{out}");
    let brokers = json_of(&cli(&["service-brokers", "--json"]));
    assert!(named(&brokers, "fake").is_some(), "{brokers}");
    assert!(named(&brokers, "hydrant").is_some(), "{brokers}");
    let market = json_of(&cli(&["marketplace", "-e", "kv", "--json"]));
    assert_eq!(
        market[0]["plans"][0]["public"], false,
        "new plans are hidden"
    );
    ok(&cli(&["enable-service-access", "kv", "-p", "small"]));
    let market = json_of(&cli(&["marketplace", "-e", "kv", "--json"]));
    assert_eq!(named(&market[0]["plans"], "small").unwrap()["public"], true);
    assert_eq!(
        named(&market[0]["plans"], "large").unwrap()["public"],
        false
    );
    let table = ok(&cli(&["marketplace"]));
    assert!(table.contains("large*"), "{table}");

    // Mistakes are refused with what is wrong and a usage exit code.
    let bad = cli(&["create-service", "kv", "huge", "c1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("has no plan \"huge\""),
        "{}",
        text(&bad)
    );
    let bad = cli(&["create-service", "kv", "small", "c1", "-c", "{not json"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // Create, with the job followed line by line.
    let out = ok(&cli(&[
        "create-service",
        "kv",
        "small",
        "c1",
        "-c",
        r#"{"maxmemory": "64mb"}"#,
        "-t",
        "a, b",
        "--wait",
    ]));
    assert!(out.contains("COMPLETE"), "{out}");
    let services = json_of(&cli(&["services", "--json"]));
    let c1 = named(&services, "c1").unwrap();
    assert_eq!(c1["last_operation"]["state"], "succeeded");
    assert_eq!(c1["tags"], json!(["a", "b"]));
    let shown = ok(&cli(&["service", "c1"]));
    assert!(
        shown.contains("small") && shown.contains("create succeeded"),
        "{shown}"
    );

    // An app that prints its VCAP_SERVICES at start.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: sleep 100000\n").unwrap();
    let app_dir = dir.path().to_str().unwrap();
    ok(&cli(&[
        "push",
        "reader",
        "-p",
        app_dir,
        "-u",
        "process",
        "--no-route",
        "-c",
        "echo \"SERVICES=$VCAP_SERVICES\"; exec sleep 100000",
    ]));
    let out = ok(&cli(&[
        "bind-service",
        "reader",
        "c1",
        "--binding-name",
        "primary",
        "--restart",
    ]));
    assert!(out.contains("restarted"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let vcap = loop {
        let logs = text(&cli(&["logs", "reader", "--recent"]));
        if let Some(line) = logs.lines().rev().find(|l| l.contains("SERVICES={\"kv\"")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no VCAP_SERVICES line after the rolling restart:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(vcap.contains("\"binding_name\":\"primary\""), "{vcap}");
    assert!(vcap.contains("\"password\":\"pw-"), "{vcap}");
    let services = json_of(&cli(&["services", "--json"]));
    assert_eq!(
        named(&services, "c1").unwrap()["bound_apps"],
        json!(["reader"])
    );

    // `hydrant logs INSTANCE` reads the instance's own source (its guid), where a broker's
    // service nodes send their `SVC` lines.
    let guid = json_of(&cli(&["service", "c1", "--json"]))["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&cli(&[
        "emit",
        &guid,
        "--message",
        "a line from the service",
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = text(&cli(&["logs", "c1", "--recent"]));
        if logs.contains("a line from the service") {
            break;
        }
        assert!(Instant::now() < deadline, "no service line:\n{logs}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Service keys.
    ok(&cli(&["create-service-key", "c1", "ops", "--wait"]));
    let key = json_of(&cli(&["service-key", "c1", "ops"]));
    assert!(
        key["password"]
            .as_str()
            .is_some_and(|p| p.starts_with("pw-")),
        "{key}"
    );
    let keys = json_of(&cli(&["service-keys", "c1", "--json"]));
    assert_eq!(keys.as_array().unwrap().len(), 1);
    ok(&cli(&["delete-service-key", "c1", "ops", "-f"]));
    assert!(
        json_of(&cli(&["service-keys", "c1", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A user-provided service whose drain feeds the syslog drain path (loopback: the micro
    // cloud allows private drains).
    let drain = TcpListener::bind("127.0.0.1:0").unwrap();
    let drain_url = format!("syslog://{}", drain.local_addr().unwrap());
    ok(&cli(&[
        "create-user-provided-service",
        "ext",
        "-p",
        r#"{"uri": "postgres://u:p@127.0.0.1:5432/app"}"#,
        "-l",
        &drain_url,
    ]));
    ok(&cli(&["bind-service", "reader", "ext"]));
    let drains = ok(&cli(&["drains", "reader", "--json"]));
    assert!(drains.contains(&drain_url), "{drains}");
    ok(&cli(&["unbind-service", "reader", "ext"]));
    ok(&cli(&["delete-service", "ext", "-f"]));

    // A plan change (the admin may use a plan that is not public).
    let out = ok(&cli(&["update-service", "c1", "-p", "large", "--wait"]));
    assert!(out.contains("COMPLETE"), "{out}");
    let c1 = json_of(&cli(&["service", "c1", "--json"]));
    assert_eq!(c1["plan"], "large");

    // Deleting needs the bindings gone first; a broker with instances cannot go.
    let refused = cli(&["delete-service", "c1", "-f"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("unbind-service"),
        "{}",
        text(&refused)
    );
    let refused = cli(&["delete-service-broker", "fake", "-f"]);
    assert!(!refused.status.success());
    ok(&cli(&["unbind-service", "reader", "c1", "--wait"]));
    ok(&cli(&["delete-service", "c1", "-f", "--wait"]));
    let services = json_of(&cli(&["services", "--json"]));
    assert!(named(&services, "c1").is_none(), "{services}");
    ok(&cli(&["delete-service-broker", "fake", "-f"]));
    let missing = cli(&["service", "c1"]);
    assert_eq!(missing.status.code(), Some(4), "{}", text(&missing));
}

/// Waits (at most 60 s) until `hydrant logs NAME --recent` shows a line containing `needle`.
fn wait_for_log(cloud: &MicroCloud, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = text(&cloud.cli(&["logs", name, "--recent"]));
        if let Some(line) = logs.lines().rev().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the logs of {name}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_micro_clouds_own_broker_gives_an_app_redis_and_shows_its_logs() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "hydrant up runs apps in real containers and needs root: run this test as root, as CI does"
    );
    let cloud = MicroCloud::start(BIN, &[]);
    let cli = |args: &[&str]| cloud.cli(args);
    let market = json_of(&cli(&["marketplace", "-e", "redis", "--json"]));
    assert_eq!(
        market[0]["broker_name"], "hydrant",
        "the redis offering needs redis-server (Debian package redis-server): {market}"
    );

    // The issue's first steps: create (no wait), then bind with a restart, which waits for the
    // create, binds and replaces the instance so it starts with the credentials.
    ok(&cli(&["create-service", "redis", "small", "cache"]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: sleep 100000\n").unwrap();
    ok(&cli(&[
        "push",
        "reader",
        "-p",
        dir.path().to_str().unwrap(),
        "-u",
        "process",
        "--no-route",
        "-c",
        "echo \"SERVICES=$VCAP_SERVICES\"; exec sleep 100000",
    ]));
    ok(&cli(&["bind-service", "reader", "cache", "--restart"]));
    let line = wait_for_log(&cloud, "reader", "SERVICES={\"redis\"");
    assert!(line.contains("\"uri\":\"redis://"), "{line}");
    // The instance's own server lines, under its name.
    wait_for_log(&cloud, "cache", "Ready to accept connections");

    ok(&cli(&["unbind-service", "reader", "cache", "--wait"]));
    ok(&cli(&["delete-service", "cache", "-f", "--wait"]));
    let services = json_of(&cli(&["services", "--json"]));
    assert!(named(&services, "cache").is_none(), "{services}");
}
